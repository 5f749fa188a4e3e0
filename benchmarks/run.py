#!/usr/bin/env python3
"""Benchmark debcache beside nginx (the limit) and the Debian caches apt-cacher-ng and approx.

    python3 benchmarks/run.py [--quick] [--json FILE]

Everything runs on this machine, on 127.0.0.1 only, and is stopped at the end:

- a signed fixture archive (tests/archive_fixture.py) with a minbase-like mix of
  .deb sizes, a debian-installer image set and a Packages index inflated by
  thousands of tiny "filler" packages (so indices weigh a few MB);
- nginx serves it as the "remote mirror": one unlimited port (the limit every
  cache is compared with) and, per cache, one port whose access log counts that
  cache's upstream requests, reached through a relay that paces every
  connection to 20 MB/s (a real mirror's speed);
- debcache (`python3 -m debcache --config X serve`), apt-cacher-ng and approx
  (installed with apt-get when missing; skipped with the reason otherwise);
- the workloads of issue 7: warm throughput (wrk, a Lua path list, c=1/16/64),
  cold transfer, herd (16 and 64 Python clients, upstream GETs per file from
  nginx's log, every body's sha256 checked), small-file request rate, a real
  `apt-get install --download-only`, server RSS across repeated runs, and
  `debcache freeze` / `debcache diff` at scale.

Each figure is printed as it is measured, then a summary with the ratios to
nginx and to the best peer and the issue's targets; `--json FILE` writes all of it.
Timings are not asserted: CI runs `--quick` only to keep the benchmark working.

The code is the `benchmarks` package around this file (README.md lists its modules).
This script only puts the checkout in place of this directory at the head of
sys.path, as `python3 -m benchmarks` from the checkout would: the package, the
tests' helpers (`archive_fixture`, ..., which the package puts on sys.path as pytest
does) and this checkout's debcache are then the ones imported.
"""

import sys
from pathlib import Path


def run() -> None:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)
    from benchmarks.main import main

    main()


if __name__ == "__main__":
    run()
