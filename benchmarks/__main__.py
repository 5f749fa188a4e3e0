"""`python3 -m benchmarks`: the same as `python3 benchmarks/run.py`."""

from benchmarks.main import main

main()
