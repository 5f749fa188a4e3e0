"""What a run measures at which size: the quick and full settings and the fixed constants."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUITE = "bookworm"
META_PACKAGE = "bench-minbase"
RATE_LIMIT = 20 * 1_000_000  # bytes/s per upstream connection: a real mirror's speed
RATE_BURST = 256 * 1024  # bytes a connection may send ahead of the rate
MB = 1_000_000


@dataclass(frozen=True)
class Settings:
    mode: str
    small: int  # .debs of 10-200 KB
    medium: int  # .debs of 200 KB - 1 MB
    large_mb: tuple[float, ...]  # .debs of 1-40 MB
    fillers: int  # tiny packages that make the Packages index a few MB
    wrk_seconds: int
    herd_budget: int  # bytes of pool files in the herd set (plus indices and images)
    rss_bytes: int  # bytes each RSS run pulls at c=64
    rss_runs: int
    peer_rss: bool  # also repeat the RSS runs for the peers
    freeze_files: int
    diff_packages: int
    small_concurrency: tuple[int, ...]
    small_kinds: tuple[str, ...]


QUICK = Settings(
    mode="quick",
    small=100,
    medium=15,
    large_mb=(1, 4, 8),
    fillers=3_000,
    wrk_seconds=1,
    herd_budget=3 * MB,
    rss_bytes=300 * MB,
    rss_runs=5,
    peer_rss=False,
    freeze_files=2_000,
    diff_packages=60_000,
    small_concurrency=(16,),
    small_kinds=("by-hash", "index"),
)
FULL = Settings(
    mode="full",
    small=300,
    medium=60,
    large_mb=(1, 1.5, 2, 3, 4, 5, 6, 8, 10, 12, 15, 18, 22, 28, 34, 40),
    fillers=10_000,
    wrk_seconds=6,
    herd_budget=40 * MB,
    rss_bytes=1100 * MB,
    rss_runs=5,
    peer_rss=True,
    freeze_files=10_000,
    diff_packages=60_000,
    small_concurrency=(16, 64),
    small_kinds=("by-hash", "index", "small-pool"),
)
