"""User story: `debcache serve` starts as documented, or says why it can't.

With nothing to serve (no upstream configured or in the apt sources, no manifest)
it exits at once with the cause and the remedy; a site that only serves imported
manifests starts. What it prints at start is what the README shows, and the
commented example configuration is accepted as it documents itself.
"""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from pathlib import Path

from apt import AptRoot
from archive_fixture import Archive
from debcache_server import DebcacheServer
from fake_mirror import FakeMirror
from processes import free_port, start_serve, wait_until
from workflow import freeze_json, record_install

from debcache.config import load_config

ROOT = Path(__file__).parent.parent
INRELEASE = "dists/bookworm/InRelease"


def without_apt_sources(command: list[str], empty: Path) -> list[str]:
    """`command` in a mount namespace where /etc/apt is an empty directory, so that
    debcache finds no upstream there (the host's own apt sources stay untouched)."""
    empty.mkdir(exist_ok=True)
    script = 'mount --bind "$0" /etc/apt && exec "$@"'
    return ["unshare", "--mount", "sh", "-c", script, str(empty), *command]


def serve_command(config: Path, port: int) -> list[str]:
    return [
        sys.executable,
        *("-m", "debcache", "--config", str(config), "serve"),
        *("--listen", f"127.0.0.1:{port}"),
    ]


def test_serve_with_no_upstream_and_no_manifest_exits_saying_why(tmp_path: Path) -> None:
    config = tmp_path / "debcache.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n')
    command = without_apt_sources(serve_command(config, free_port()), tmp_path / "apt")
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode != 0
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: ") and "no upstream" in line and "no manifest" in line
    assert "[upstreams.NAME]" in line and "/etc/apt/sources.list" in line


def test_a_site_serving_only_its_manifests_starts_without_upstreams(
    keyed_debcache: DebcacheServer, archive: Archive, mirror: FakeMirror, tmp_path: Path
) -> None:
    record_install(keyed_debcache, AptRoot(tmp_path / "a"), archive, mirror, "r1", "hello")
    freeze_json(keyed_debcache, "r1", "--promote", "b1")
    keyed_debcache.stop()
    config = tmp_path / "pinned-only.toml"
    config.write_text(f'[server]\ndata_dir = "{keyed_debcache.data_dir}"\n')
    port = free_port()
    command = without_apt_sources(serve_command(config, port), tmp_path / "apt")
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            assert process.poll() is None, process.stderr.read()
            try:
                with urllib.request.urlopen(f"{url}/_/health", timeout=1):
                    return True
            except OSError:
                return False

        wait_until(answers, "the pinned-only debcache to answer /_/health")
        with urllib.request.urlopen(f"{url}/pin/b1/debian/{INRELEASE}", timeout=30) as reply:
            assert reply.read() == archive.read(INRELEASE)
        with urllib.request.urlopen(f"{url}/", timeout=30) as reply:
            assert f"  {url}/pin/b1/debian/\n" in reply.read().decode()
    finally:
        process.terminate()
        process.wait(timeout=30)
        process.stderr.close()


# --- what the README and the example configuration promise ------------------------------

# Each line `serve` prints at start, with what varies in it left open.
START_LINE_SHAPES = {
    "configuration": r"debcache: configuration from .+; data in \S+",
    "no upstream": r"debcache: no upstreams configured .+",
    "upstream": r"debcache: upstream [A-Za-z0-9][A-Za-z0-9._+-]*: \S+( \S+)*",
    "listening": r"debcache: listening on http://\S+/",
    "workers": r"debcache: [1-9][0-9]* worker process(es)?",
}


def shape(line: str) -> str:
    found = [name for name, pattern in START_LINE_SHAPES.items() if re.fullmatch(pattern, line)]
    assert found, f"not a line serve prints at start: {line!r}"
    return found[0]


def readme_start_up_sample() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```\n(debcache: .*?)```", readme, re.DOTALL)
    assert blocks, "the README shows no start-up output of debcache serve"
    return blocks[0].splitlines()


def test_the_readme_shows_the_lines_serve_prints_at_start(
    keyed_debcache: DebcacheServer,
) -> None:
    keyed_debcache.stop()  # its config file, on a port of our own
    port = free_port()
    config = keyed_debcache.config_file
    config.write_text(
        config.read_text().replace("[server]\n", f'[server]\nlisten = ["127.0.0.1:{port}"]\n')
    )
    process = start_serve(config, port, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        printed: list[str] = []
        while not printed or "worker process" not in printed[-1]:  # the last start line
            line = process.stderr.readline()
            assert line, f"serve stopped printing before its last start line: {printed}"
            printed.append(line.rstrip("\n"))
    finally:
        process.terminate()
        process.wait(timeout=30)
        process.stderr.close()
    # The README has two upstreams where this server has one: compare runs of shapes.
    runs = [s for i, s in enumerate(map(shape, printed)) if i == 0 or shape(printed[i - 1]) != s]
    sample = readme_start_up_sample()
    readme_runs = [
        s for i, s in enumerate(map(shape, sample)) if i == 0 or shape(sample[i - 1]) != s
    ]
    assert readme_runs == runs, (sample, printed)


def test_the_example_configuration_loads_with_every_documented_key(tmp_path: Path) -> None:
    """etc/debcache.toml, with every commented-out setting switched on, is accepted."""
    example = (ROOT / "etc" / "debcache.toml").read_text()
    commented = re.compile(r"# (\[[\w.-]+\]|[a-z_]+ = .*)")
    lines = [
        m.group(1) if (m := commented.fullmatch(line)) else line for line in example.split("\n")
    ]
    assert lines != example.split("\n"), "the example has no commented-out settings"
    everything = tmp_path / "debcache.toml"
    everything.write_text("\n".join(lines))
    config = load_config(everything)
    assert config.admin_token == "" and set(config.upstreams) == {"debian", "debian-security"}
    (branch,) = config.branches.values()
    assert (branch.fill, branch.resign, branch.grace) == ("strict", False, 3600.0)
    assert "later release" not in example
