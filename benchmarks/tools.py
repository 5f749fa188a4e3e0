"""Installing what the benchmark runs (nginx, wrk, the peers) with apt-get, no service started."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks.peers import PEER_NAMES, PEERS, PeerCache

REQUIRED = {"nginx": "nginx-light", "wrk": "wrk"}  # tool: the package that has it


def apt_install(packages: list[str]) -> str | None:
    """apt-get install packages without starting their services; None or why it failed."""
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = False
    if not policy.exists():
        # Keep invoke-rc.d from starting apt-cacher-ng or nginx on the default ports.
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        made_policy = True
    try:
        return _apt_get_install(packages)
    except OSError as exc:
        return str(exc)
    finally:
        if made_policy:
            policy.unlink()


def _apt_get_install(packages: list[str]) -> str | None:
    """apt-get install, again after an update if it failed; None or apt-get's last line."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return (result.stderr.strip().splitlines() or ["apt-get failed"])[-1]
    return None


def stop_system_service(name: str) -> None:
    """If an install started the packaged service anyway, stop it through its own script."""
    script = Path(f"/etc/init.d/{name}")
    if script.exists():
        running = subprocess.run([str(script), "status"], capture_output=True, check=False)
        if running.returncode == 0:
            print(f"  stopping the {name} service that the install started")
            subprocess.run([str(script), "stop"], capture_output=True, check=False)


def ensure_tools(want_peers: bool) -> dict[str, str | None]:
    """Install nginx and wrk (required) and the peers; {peer: None or why it is skipped}."""
    missing = [package for tool, package in REQUIRED.items() if not shutil.which(tool)]
    if missing:
        print(f"installing {' '.join(missing)} with apt-get")
        failure = apt_install(missing)
        if failure or not all(shutil.which(tool) for tool in REQUIRED):
            sys.exit(f"run.py: cannot install {' '.join(missing)}: {failure}")
    if not want_peers:
        return dict.fromkeys(PEER_NAMES, "--no-peers given")
    return {peer.name: ensure_peer(peer) for peer in PEERS}


def ensure_peer(peer: type[PeerCache]) -> str | None:
    """Install a peer cache if it is missing; None, or why it is skipped."""
    if not peer.installed():
        print(f"installing {peer.name} with apt-get")
        failure = apt_install(list(peer.packages))
        if failure:
            why = f"apt-get install {' '.join(peer.packages)} failed: {failure}"
            print(f"  skipping {peer.name}: {why}")
            return why
    stop_system_service(peer.name)
    return None
