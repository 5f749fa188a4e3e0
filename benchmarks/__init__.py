"""The debcache benchmark: debcache beside nginx, apt-cacher-ng and approx on loopback.

Run it as `python3 benchmarks/run.py [--quick]` (or `python3 -m benchmarks` from the
checkout); README.md in this directory says what it measures and how.
"""
