# ruff: noqa  (an experiment harness: sizes costs on the warm path by switching parts off)
"""Size the costs on debcache's warm path: variants of the same server on the same warm data."""

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

work = sorted(glob.glob("/tmp/debcache-bench-*"), key=os.path.getmtime)[-1]
data = f"{work}/debcache/data3"
paths = f"{work}/wrk/paths1.txt"
lua = f"{work}/wrk/paths.lua"
keyring = f"{work}/key/keyring.gpg"
secs = int(os.environ.get("SECS", "5"))


def config(port):
    p = f"/tmp/exp-{port}.toml"
    open(p, "w").write(
        f'[server]\nlisten = ["127.0.0.1:{port}"]\ndata_dir = "{data}"\n\n[upstreams.debian]\nurls = ["http://127.0.0.1:1/debian"]\nkeyring = "{keyring}"\n'
    )
    return p


def start(port, variant):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "VARIANT": variant}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("variant_server.py")),
            "--config",
            config(port),
            "serve",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(f"/tmp/exp-{port}.log", "w"),
        start_new_session=True,
    )
    for _ in range(100):
        if (
            subprocess.run(
                ["curl", "-sf", f"http://127.0.0.1:{port}/_/health"], capture_output=True
            ).returncode
            == 0
        ):
            return proc
        time.sleep(0.1)
    raise SystemExit(f"{variant} did not start")


def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()
    return (int(f[11]) + int(f[12])) / 100


def wrk(ports, conns):
    procs = [
        subprocess.Popen(
            [
                "wrk",
                "-t1" if len(ports) > 1 else "-t2",
                f"-c{conns // len(ports)}",
                f"-d{secs}s",
                "-s",
                lua,
                f"http://127.0.0.1:{p}/",
            ],
            env={**os.environ, "BENCH_PATHS": paths},
            stdout=subprocess.PIPE,
            text=True,
        )
        for p in ports
    ]
    total = 0
    dur = 0
    for p in procs:
        out = p.communicate()[0]
        line = next(l for l in out.splitlines() if l.startswith("BENCH "))
        d = json.loads(line[6:])
        total += d["bytes"]
        dur = max(dur, d["duration_us"] / 1e6)
        assert d["status"] == 0 and d["read"] == 0, d
    return total / dur / 1e6


variants = sys.argv[1:] or ["base", "noaccess", "nofetchlog", "noaccess,nofetchlog", "two:base"]
for variant in variants:
    two = variant.startswith("two:")
    v = variant.removeprefix("two:")
    ports = [24001, 24002] if two else [24001]
    procs = [start(p, v) for p in ports]
    try:
        for conns in (16, 64):
            c0 = sum(cpu(p.pid) for p in procs)
            t0 = time.time()
            mbs = wrk(ports, conns)
            c1 = sum(cpu(p.pid) for p in procs)
            print(
                f"{variant:28s} c={conns:<3d} {mbs:8.1f} MB/s  server_cpu={(c1 - c0) / (time.time() - t0):.2f}",
                flush=True,
            )
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait()
