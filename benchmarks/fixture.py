"""The archive the benchmark serves: a signed minbase-like suite built with the tests' fixture.

Real .debs of a spread of sizes, a meta package depending on all of them, a
debian-installer image set, and thousands of tiny filler packages so that Packages
weighs a few MB; with the lists of paths each workload fetches.
"""

from __future__ import annotations

import hashlib
import math
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import archive_fixture

from benchmarks.settings import MB, META_PACKAGE, SUITE, Settings


@dataclass
class Fixture:
    root: Path  # served as /, files under root/debian
    keyring: Path
    pool: list[str]  # the real packages (the "install"): archive-relative paths
    fillers: list[str]
    dists: list[str]  # what apt and d-i fetch below dists/ (no by-hash, no MD5SUMS)
    by_hash: list[str]  # SHA256 by-hash files
    volatile: list[str]  # InRelease, Packages..., installer images: revalidated by caches
    sha256: dict[str, str] = field(default_factory=dict)
    size: dict[str, int] = field(default_factory=dict)

    def path(self, relative: str) -> Path:
        return self.root / "debian" / relative

    def total(self, paths: list[str]) -> int:
        return sum(self.size[p] for p in paths)


def build_fixture(work: Path, settings: Settings) -> Fixture:
    """Build and sign the archive below work/www; its paths, sizes and hashes."""
    rng = random.Random(12)
    key = archive_fixture.make_signing_key(work / "key")
    specs = package_specs(rng, settings)
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(archive_fixture.build_package, specs))
    meta = archive_fixture.PackageSpec(
        META_PACKAGE, "1.0", architecture="all", depends=", ".join(s.name for s in specs)
    )
    fillers = filler_specs(rng, settings.fillers)
    archive = archive_fixture.Archive(work / "www", key)
    archive.publish_suite(
        SUITE,
        [*specs, meta, *fillers],
        codename=SUITE,
        installer=archive_fixture.default_installer(),
    )
    installer = archive.installer(SUITE)
    kernel_udeb = installer.kernel_udeb().pool_path() if installer else None
    pool = [s.pool_path() for s in [*specs, meta]] + ([kernel_udeb] if kernel_udeb else [])
    dists, by_hash = split_dists(archive.files())
    filler_paths = [s.pool_path() for s in fillers]
    result = Fixture(work / "www", key.keyring, pool, filler_paths, dists, by_hash, list(dists))
    measure(result)
    return result


def log_uniform(rng: random.Random, low: int, high: int) -> int:
    return int(math.exp(rng.uniform(math.log(low), math.log(high))))


def package_specs(rng: random.Random, settings: Settings) -> list[archive_fixture.PackageSpec]:
    """The real packages: small, medium and large .debs, some libraries, some arch all."""
    sizes = [log_uniform(rng, 10_000, 200_000) for _ in range(settings.small)]
    sizes += [log_uniform(rng, 200_000, 1_000_000) for _ in range(settings.medium)]
    sizes += [int(mb * MB) for mb in settings.large_mb]
    specs = []
    for number, payload in enumerate(sizes):
        name = f"libbench{number:04d}" if number % 3 == 0 else f"bench-{number:04d}"
        specs.append(
            archive_fixture.PackageSpec(
                name,
                f"{1 + number % 5}.{number % 11}-{1 + number % 3}+b1",
                architecture="all" if number % 10 == 7 else "amd64",
                section="libs" if name.startswith("lib") else "utils",
                payload_size=payload,
            )
        )
    return specs


def filler_specs(rng: random.Random, count: int) -> list[archive_fixture.PackageSpec]:
    """Packages that make Packages as long as a real one.

    Their bytes are made here, not by dpkg-deb (ten thousand builds would take
    minutes); nothing unpacks them.
    """
    fillers = []
    built = getattr(archive_fixture, "_built", None)
    for number in range(count):
        spec = archive_fixture.PackageSpec(f"filler{number:05d}", "1.0-1", payload_size=400)
        if built is not None:
            built[spec] = b"!<arch>\n" + rng.randbytes(rng.randint(200, 1500))
        fillers.append(spec)
    return fillers


def split_dists(files: list[str]) -> tuple[list[str], list[str]]:
    """(what apt and d-i fetch below dists/ in apt's order, the SHA256 by-hash files)."""
    dists, by_hash = [], []
    for path in files:
        if not path.startswith("dists/"):
            continue
        if "/by-hash/SHA256/" in path:
            by_hash.append(path)
        elif "/by-hash/" in path or path.endswith("/MD5SUMS"):
            continue
        elif "/installer-" in path and "/current/" not in path:
            continue  # the version directory: the same bytes as current/
        else:
            dists.append(path)
    # apt's order: the Release first, then indices; images last.
    dists.sort(key=lambda p: (not p.endswith("InRelease"), "/installer-" in p, p))
    return dists, by_hash


def measure(fx: Fixture) -> None:
    """Every fetched file's sha256 and size; the fillers' sizes."""
    for path in [*fx.pool, *fx.dists, *fx.by_hash]:
        data = fx.path(path).read_bytes()
        fx.sha256[path], fx.size[path] = hashlib.sha256(data).hexdigest(), len(data)
    for path in fx.fillers:
        fx.size[path] = fx.path(path).stat().st_size
