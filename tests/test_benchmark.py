"""The benchmark keeps working: its quick mode runs and every workload reports.

Timings are not asserted (they belong to benchmarks/RESULTS.md); what is checked
are the properties that hold whatever the machine: every body's hash, one
upstream request per file in a herd, a freeze that succeeds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).parent.parent


def test_the_quick_benchmark_runs_and_reports_every_workload(tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--quick", "--no-peers", "--json", str(report)],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    figures = json.loads(report.read_text())
    for workload in ("warm", "small", "cold", "herd", "apt", "rss", "freeze", "diff"):
        assert figures[workload], f"no {workload} figures"
    for herd in figures["herd"]:
        assert herd["bodies_ok"] == herd["bodies_expected"], herd
        # One download per file: pool files are asked for once, every file arrives whole
        # once. A volatile file may also be revalidated (a 304) when clients reach it more
        # than the coalesce window apart, as they do on a loaded machine: by design.
        assert herd["pool_per_file"] == 1.0, herd
        assert herd["upstream_200_per_file"] == 1.0, herd
    assert all(row["ok"] for row in figures["apt"])
    assert figures["freeze"]["freeze_ok"]
    assert all(row["errors"] == 0 for row in figures["warm"])
