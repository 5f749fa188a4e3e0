"""`debcache serve` as a supervisor of server processes that share its listening sockets.

The supervisor binds (or receives from systemd) the sockets once and runs a
*generation* of children, each a fresh `python -m debcache ...` with the same
arguments, so a child always runs the code and configuration on disk:

- with `workers = 1`, one `single` process that does everything;
- with `workers = N > 1`, one `fetcher` (every upstream request, so one download
  per file machine-wide; the API and the status page) listening on a private Unix
  socket, and N `worker`s on the public sockets that answer hits from the store
  and relay everything else to the fetcher.

SIGHUP starts a new generation beside the old one and stops the old one (it drains
its responses) only once every new child is ready: the sockets never stop
accepting. A child that dies is restarted; one that keeps dying stops the server
with an error instead of a fork storm. Every child holds the read end of a pipe
whose write end only the supervisor has: if the supervisor is killed, the pipe
ends and the children stop too, so nothing is left holding the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import DebcacheError, WorkerCrashLoop
from .systemd import Notifier

log = logging.getLogger("debcache.supervisor")  # also when run as __main__
CHILD_ENV = "DEBCACHE_CHILD"
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's multiprocess mode
READY_TIMEOUT = 120.0  # seconds a new child may take to serve (a big cache to load)
# Seconds a child may take to drain after SIGTERM, then SIGKILL (under the unit's 30 s).
STOP_TIMEOUT = 20.0
# A slot whose process exits this many times within CRASH_WINDOW seconds stops the server.
CRASH_LIMIT = 5
CRASH_WINDOW = 60.0
RESTART_DELAYS = (0.1, 0.5, 1.0, 2.0)  # seconds before restarting, by recent exits


SUPERVISOR_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


class EarlySignals:
    """Notes SIGINT/SIGTERM/SIGHUP from the start of `serve` until the loop handles them
    (a Python handler runs in the main thread whichever thread the signal reaches)."""

    def __init__(self) -> None:
        self.received: set[int] = set()
        for signum in SUPERVISOR_SIGNALS:
            signal.signal(signum, self._note)

    def _note(self, signum: int, frame: object) -> None:
        self.received.add(signum)


@dataclass(frozen=True)
class ChildSpec:
    """What a child process is told in $DEBCACHE_CHILD (JSON)."""

    role: str  # "single", "fetcher" or "worker"
    listen_fds: list[int]  # its listening sockets (the fetcher's: the private one)
    parent_fd: int  # ends (EOF) when the supervisor is gone
    ready_fd: int  # written once the child serves
    fetcher_socket: str | None = None  # where workers relay to

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> ChildSpec | None:
        text = os.environ.get(CHILD_ENV)
        return cls(**json.loads(text)) if text else None


@dataclass(eq=False)
class Child:
    slot: str  # "fetcher", "worker 1", ...
    spec: ChildSpec
    process: asyncio.subprocess.Process
    ready: asyncio.Future = field(default_factory=asyncio.Future)
    retired: bool = False  # told to stop: its exit is expected
    watcher: asyncio.Future | None = None


class ChildFailed(Exception):
    def __init__(self, child: Child, status: int | None) -> None:
        super().__init__(f"{child.slot} exited with status {status} before it served")
        self.child, self.status = child, status


class Supervisor:
    def __init__(
        self,
        workers: int,
        sockets: list[socket.socket],
        early_signals: EarlySignals | None = None,
        notifier: Notifier | None = None,
        child_arguments: list[str] | None = None,
    ) -> None:
        self.workers = workers
        # `debcache ... serve ...` as the user gave it: each child runs the same command.
        self.child_arguments = child_arguments if child_arguments is not None else sys.argv[1:]
        self.early_signals = early_signals or EarlySignals()
        self.sockets = sockets
        self.notifier = notifier or Notifier()
        self.run_dir = Path(tempfile.mkdtemp(prefix="debcache-"))
        self.fetcher_path = str(self.run_dir / "fetcher.sock")
        self.fetcher_socket = self._fetcher_listener() if workers > 1 else None
        # Children hold the read end; nobody but this process holds the write end.
        self._alive_read, self._alive_write = os.pipe()
        self.current: list[Child] = []
        self.children: set[Child] = set()
        self._exits: dict[str, deque[float]] = {}
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self.failure: DebcacheError | None = None

    def _fetcher_listener(self) -> socket.socket:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.fetcher_path)
        listener.listen(1024)
        return listener

    # --- the main loop ------------------------------------------------------------

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT; the exit status of `debcache serve`."""
        os.environ[METRICS_ENV] = str(self.run_dir / "metrics")
        os.mkdir(os.environ[METRICS_ENV])
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        if self.early_signals.received & {signal.SIGINT, signal.SIGTERM}:
            self._stop.set()
        try:
            if self._stop.is_set():  # told to stop before it started
                return 0
            try:
                self.current = await self._start_generation()
            except ChildFailed as exc:
                if not exc.status or exc.status < 0:  # killed: it could not say why itself
                    log.error("%s; debcache stops", exc)
                return exc.status if exc.status and exc.status > 0 else 1
            self._say_ready()
            await self._serve()
        finally:
            self.notifier.notify("STOPPING=1")
            await self._stop_children(self.children)
            self._clean_up()
        if self.failure is not None:
            raise self.failure
        return 0

    async def _serve(self) -> None:
        while not self._stop.is_set():
            stop = asyncio.ensure_future(self._stop.wait())
            reload = asyncio.ensure_future(self._reload.wait())
            await asyncio.wait([stop, reload], return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            reload.cancel()
            if self._reload.is_set() and not self._stop.is_set():
                self._reload.clear()
                await self._reload_generation()

    async def _reload_generation(self) -> None:
        """A new generation with the code and configuration on disk; then the old one stops."""
        log.info("reloading: starting new server processes beside the running ones")
        self.notifier.reloading()
        try:
            new = await self._start_generation()
        except ChildFailed as exc:
            log.error("reload failed (%s); still serving with the processes started before", exc)
            self.notifier.notify("READY=1", "STATUS=reload failed; serving as before")
            return
        old, self.current = self.current, new
        self._say_ready()
        log.info("reloaded; the previous processes finish their responses and stop")
        await self._stop_children(old)

    def _say_ready(self) -> None:
        processes = ", ".join(f"{c.slot} {c.process.pid}" for c in self.current)
        log.info("serving (pids: %s)", processes)
        self.notifier.notify("READY=1", f"STATUS=serving with {self.workers} worker(s)")

    # --- children -----------------------------------------------------------------

    async def _start_generation(self) -> list[Child]:
        """The fetcher first (its start-up error is printed once), then the workers."""
        generation: list[Child] = []
        try:
            if self.workers == 1:
                generation.append(await self._spawn("server", "single", self.sockets))
                await self._wait_ready(generation)
                return generation
            assert self.fetcher_socket is not None
            generation.append(await self._spawn("fetcher", "fetcher", [self.fetcher_socket]))
            await self._wait_ready(generation)
            for number in range(1, self.workers + 1):
                generation.append(await self._spawn(f"worker {number}", "worker", self.sockets))
            await self._wait_ready(generation)
            return generation
        except BaseException:
            await self._stop_children(generation)
            raise

    async def _wait_ready(self, children: list[Child]) -> None:
        pending = [child.ready for child in children]
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                await asyncio.gather(*pending)
        except TimeoutError:
            raise ChildFailed(children[-1], None) from None

    async def _spawn(self, slot: str, role: str, sockets: list[socket.socket]) -> Child:
        ready_read, ready_write = os.pipe()
        fds = [sock.fileno() for sock in sockets]
        spec = ChildSpec(
            role,
            fds,
            self._alive_read,
            ready_write,
            self.fetcher_path if self.workers > 1 else None,
        )
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "debcache",
                *self.child_arguments,
                env={**os.environ, CHILD_ENV: spec.to_env()},
                pass_fds=[*fds, self._alive_read, ready_write],
            )
        finally:
            os.close(ready_write)
        child = Child(slot, spec, process)
        self.children.add(child)
        child.watcher = asyncio.ensure_future(self._watch(child, ready_read))
        return child

    async def _watch(self, child: Child, ready_read: int) -> None:
        """Note when the child serves; when it exits, restart it if it still should run.

        A child of a generation being started is not in `current` yet: its failure is
        the start's (ChildFailed), not a restart's."""
        if await _read_ready(ready_read) and not child.ready.done():
            child.ready.set_result(None)
        status = await child.process.wait()
        self.children.discard(child)
        _mark_metrics_dead(child.process.pid)
        if not child.ready.done():
            child.ready.set_exception(ChildFailed(child, status))
            child.ready.exception()  # retrieved: a failed start is handled by its waiter
        if child.retired or self._stop.is_set() or child not in self.current:
            return
        log.error("%s (pid %d) exited with status %s", child.slot, child.process.pid, status)
        await self._restart(child, status)

    async def _restart(self, child: Child, status: int) -> None:
        exits = self._exits.setdefault(child.slot, deque(maxlen=CRASH_LIMIT))
        exits.append(time.monotonic())
        if len(exits) == CRASH_LIMIT and exits[-1] - exits[0] < CRASH_WINDOW:
            self.failure = WorkerCrashLoop(
                f"{child.slot} exited {CRASH_LIMIT} times within {CRASH_WINDOW:.0f} s "
                f"(last exit status {status}); debcache stopped rather than restart it again",
                "the log above says why (e.g. the data directory is not writable); fix that "
                "and start debcache again",
            )
            self._stop.set()
            return
        await asyncio.sleep(RESTART_DELAYS[min(len(exits), len(RESTART_DELAYS)) - 1])
        if self._stop.is_set() or child not in self.current:
            return
        role = child.spec.role
        sockets = [self.fetcher_socket] if role == "fetcher" else self.sockets
        replacement = await self._spawn(child.slot, role, sockets)  # type: ignore[list-item]
        self.current = [replacement if c is child else c for c in self.current]

    async def _stop_children(self, children: set[Child] | list[Child]) -> None:
        """The workers first, then the fetcher: a worker that drains may still relay a
        request, which only a fetcher can answer."""
        children = list(children)
        await self._stop_now([c for c in children if c.spec.role != "fetcher"])
        await self._stop_now([c for c in children if c.spec.role == "fetcher"])

    async def _stop_now(self, children: list[Child]) -> None:
        """SIGTERM (they drain), then SIGKILL whatever is still there after STOP_TIMEOUT."""
        for child in children:
            child.retired = True
            _signal(child, signal.SIGTERM)
        waits = [asyncio.ensure_future(child.process.wait()) for child in children]
        if not waits:
            return
        _, late = await asyncio.wait(waits, timeout=STOP_TIMEOUT)
        for child in children:
            if child.process.returncode is None:
                log.warning("%s did not stop within %.0f s: killed", child.slot, STOP_TIMEOUT)
                _signal(child, signal.SIGKILL)
        if late:
            await asyncio.wait(late)

    def _clean_up(self) -> None:
        for sock in self.sockets:
            sock.close()
        if self.fetcher_socket is not None:
            self.fetcher_socket.close()
        os.close(self._alive_write)
        os.close(self._alive_read)
        shutil.rmtree(self.run_dir, ignore_errors=True)


async def _read_ready(fd: int) -> bool:
    """True once the child writes its ready line; False when it exits without."""
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[bool] = loop.create_future()

    def readable() -> None:
        try:
            data = os.read(fd, 64)
        except BlockingIOError:
            return
        if not outcome.done():
            outcome.set_result(bool(data))

    os.set_blocking(fd, False)
    loop.add_reader(fd, readable)
    try:
        return await outcome
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def _signal(child: Child, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        child.process.send_signal(signum)


def _mark_metrics_dead(pid: int) -> None:
    """Drop a dead process's live gauges from the shared metrics (its counters stay):
    what prometheus_client's mark_process_dead does, without importing it here."""
    directory = os.environ.get(METRICS_ENV)
    if directory:
        for gauge in Path(directory).glob(f"gauge_live*_{pid}.db"):
            gauge.unlink(missing_ok=True)


# --- the supervisor's own process ---------------------------------------------------
#
# `serve` checks the configuration, binds the sockets, prints where it serves and
# prepares the data dir with the whole program loaded (about 50 MB); then it execs
# this module, which loads asyncio and little else, to supervise for as long as the
# server runs. The sockets stay open across the exec; SIGINT, SIGTERM and SIGHUP
# stay blocked until the new process handles them, so none is lost or fatal.

SUPERVISE_ENV = "DEBCACHE_SUPERVISE"


def exec_supervisor(
    workers: int, sockets: list[socket.socket], early_signals: EarlySignals
) -> None:
    """Replace this process with a lean supervisor of `workers` (never returns)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, SUPERVISOR_SIGNALS)
    for sock in sockets:
        os.set_inheritable(sock.fileno(), True)
    plan = {
        "workers": workers,
        "fds": [sock.fileno() for sock in sockets],
        "arguments": sys.argv[1:],
        "signals": sorted(int(signum) for signum in early_signals.received),
    }
    sys.stdout.flush()
    sys.stderr.flush()
    environment = {**os.environ, SUPERVISE_ENV: json.dumps(plan)}
    os.execve(sys.executable, [sys.executable, "-m", "debcache.supervisor"], environment)


def configure_logging() -> None:
    """The log of every `debcache serve` process: one line a record, on stderr (the
    journal, under systemd)."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def main() -> None:
    plan = json.loads(os.environ.pop(SUPERVISE_ENV))
    configure_logging()
    early_signals = EarlySignals()
    early_signals.received.update(plan["signals"])
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SUPERVISOR_SIGNALS)  # blocked before the exec
    sockets = [socket.socket(fileno=fd) for fd in plan["fds"]]
    for sock in sockets:
        os.set_inheritable(sock.fileno(), False)
    supervisor = Supervisor(
        plan["workers"], sockets, early_signals, child_arguments=plan["arguments"]
    )
    try:
        status = asyncio.run(supervisor.run())
    except DebcacheError as exc:  # as the command line prints its errors
        print(f"Error: {exc}", file=sys.stderr)
        status = 1
    sys.exit(status)


if __name__ == "__main__":
    main()
