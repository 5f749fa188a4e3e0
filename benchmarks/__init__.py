"""The debcache benchmark: debcache beside nginx, apt-cacher-ng and approx on loopback.

Run it as `python3 benchmarks/run.py [--quick]` (or `python3 -m benchmarks` from the
checkout); README.md in this directory says what it measures and how.
"""

import sys
from pathlib import Path

# The tests' helpers (archive_fixture and the modules it is split into, apt, processes)
# import each other as top-level modules, the way pytest imports them with tests/ first
# on sys.path; the benchmark shares them, so it imports them the same way.
_TESTS = str(Path(__file__).resolve().parent.parent / "tests")
if _TESTS not in sys.path:
    sys.path.insert(1, _TESTS)
