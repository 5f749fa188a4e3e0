"""Configuration: dataclasses, TOML loading and validation, apt-sources discovery.

`load_config` is the only entry point. It reads the file named by `--config`,
`$DEBCACHE_CONFIG` or `/etc/debcache/debcache.toml`; with no file at all the
upstreams come from the host's own apt sources, so `debcache serve` works on
any Debian host without configuration.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from debian import deb822

from .errors import ConfigError

DEFAULT_PORT = 3142
DEFAULT_LISTEN = (("0.0.0.0", DEFAULT_PORT),)
DEFAULT_CONFIG_PATH = Path("/etc/debcache/debcache.toml")
DEBIAN_ARCHIVE_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
DEFAULT_TIMEOUT = 30.0
DEFAULT_COALESCE_WINDOW = 1.0
DEFAULT_MAX_FILE_SIZE = 4 * 10**9  # an unknown-length body stops here (a DVD image fits)
DEFAULT_DEADLINE = 3600.0  # seconds one download may take in all, however it trickles
CONNECT_TIMEOUT = 10.0
RESERVED_UPSTREAM_NAMES = frozenset({"record", "pin", "manifest", "_"})
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
TOML_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
ANYONE = ["0.0.0.0/0", "::/0"]  # the default of [server] status_from
DEFAULT_FETCH_LOG_DAYS = 90


def toml_key(*parts: str) -> str:
    """A dotted TOML key, each part quoted where TOML needs it: `branches."xen-4.19"`.

    Branch and upstream names may hold '.' or '+', which a bare key cannot: a remedy
    that says `[branches.xen-4.19]` would create a table `4` inside `xen-4`.
    """
    return ".".join(p if TOML_BARE_KEY.fullmatch(p) else json.dumps(p) for p in parts)


def toml_table(*parts: str) -> str:
    """The header of a TOML table, e.g. `[branches."xen-4.19"]`."""
    return f"[{toml_key(*parts)}]"


@dataclass(frozen=True)
class Upstream:
    """A named Debian archive: base URLs tried in order, its keyring, the hosts it proxies."""

    name: str
    urls: tuple[str, ...]
    keyring: Path | None = DEBIAN_ARCHIVE_KEYRING
    proxy_hosts: tuple[str, ...] = ()
    timeout: float = DEFAULT_TIMEOUT
    # A volatile file validated this many seconds ago counts as validated for a new
    # request, so a herd arriving over a second makes one upstream request. 0: every one.
    coalesce_window: float = DEFAULT_COALESCE_WINDOW
    # Hosts (HOST or HOST:PORT) a redirect may lead to besides the base URLs, e.g. a CDN.
    redirect_hosts: tuple[str, ...] = ()
    # A body whose size no index, Release or lockfile gives stops after this many bytes.
    max_file_size: int = DEFAULT_MAX_FILE_SIZE
    # Every download ends within this many seconds, however slowly the bytes drip.
    deadline: float = DEFAULT_DEADLINE


@dataclass(frozen=True)
class Branch:
    """Per-branch options; branches also exist without a config section."""

    name: str
    fill: str = "strict"
    resign: bool = False
    grace: float = 3600.0


@dataclass(frozen=True)
class Config:
    listen: tuple[tuple[str, int], ...]
    data_dir: Path
    upstreams: dict[str, Upstream]
    branches: dict[str, Branch] = field(default_factory=dict)
    admin_token: str = ""
    source: Path | None = None  # the file it came from; None for built-in defaults
    # Clients that may read the status page and the API (GET /_/, /_/api/...).
    status_from: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n) for n in ANYONE)
    # Processes that answer clients; None: one per CPU this process may run on.
    workers: int | None = None
    # Fetch-log rows older than this are pruned (recordings a manifest was frozen from stay).
    fetch_log_days: int = DEFAULT_FETCH_LOG_DAYS

    @property
    def worker_count(self) -> int:
        return self.workers or default_worker_count()


def default_worker_count() -> int:
    return len(os.sched_getaffinity(0)) or 1


def check_worker_count(value: object, named_by: str) -> int:
    """A positive number of worker processes, or a ConfigError naming where it came from."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"{named_by}: expected a whole number of worker processes, 1 or more, got {value!r}",
            f"set it to e.g. {default_worker_count()} (one per CPU, the default), or 1",
        )
    return value


def load_config(
    path: Path | str | None = None,
    *,
    apt_dir: Path = Path("/etc/apt"),
    named_by: str = "--config",
) -> Config:
    """Load and validate the configuration, or derive one from the host's apt sources.

    `named_by` says where `path` came from ("--config" or "$DEBCACHE_CONFIG"), for the
    remedy when it does not exist.
    """
    if not path and os.environ.get("DEBCACHE_CONFIG"):
        named_by = "$DEBCACHE_CONFIG"
    path = _config_path(path)
    if path is None:
        return Config(
            listen=DEFAULT_LISTEN,
            data_dir=default_data_dir(),
            upstreams=discover_upstreams(apt_dir),
        )
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such configuration file (named by {named_by})", _remedy_for(named_by)
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc}", "fix the file's TOML syntax") from None
    except IsADirectoryError:
        raise ConfigError(
            f"{path}: a directory, not a configuration file (named by {named_by})",
            f"{_name_file_with(named_by)} the TOML file, e.g. {path / 'debcache.toml'}",
        ) from None
    except PermissionError:
        raise ConfigError(
            f"{path}: this user may not read it (named by {named_by})",
            f"run debcache as the user `debcache serve` runs as, or name another with {named_by}",
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read it: {exc.strerror} (named by {named_by})",
            f"make it a file this user can read, or name another with {named_by}",
        ) from None
    return parse_config(document, path, apt_dir=apt_dir)


def _name_file_with(named_by: str) -> str:
    return f"point {named_by} at" if named_by.startswith("$") else f"pass {named_by}"


def _remedy_for(named_by: str) -> str:
    if named_by.startswith("$"):
        return f"point {named_by} at an existing file, or unset it to use the built-in defaults"
    return f"pass an existing file to {named_by}, or none to use the built-in defaults"


def _config_path(path: Path | str | None) -> Path | None:
    if path:
        return Path(path)
    if os.environ.get("DEBCACHE_CONFIG"):
        return Path(os.environ["DEBCACHE_CONFIG"])
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None


def default_data_dir() -> Path:
    """`/var/lib/debcache` as root, `$XDG_DATA_HOME/debcache` otherwise."""
    if os.geteuid() == 0:
        return Path("/var/lib/debcache")
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "debcache"


# --- validation -----------------------------------------------------------------


class _Section:
    """A TOML table being validated: every key read is ticked off; the rest are unknown."""

    def __init__(self, source: Path, path: tuple[str, ...], table: object) -> None:
        if not isinstance(table, dict):
            header = toml_table(*path)
            raise ConfigError(f"{source}: {header} must be a table", f"write it as {header}")
        self.source, self.path, self.table = source, path, table
        self.seen: set[str] = set()

    def error(self, key: str, reason: str, remedy: str) -> ConfigError:
        where = toml_key(*self.path, *([key] if key else [])) or "(top level)"
        return ConfigError(f"{self.source}: {where}: {reason}", remedy)

    def get(self, key: str, kind: type | tuple[type, ...], default: object) -> object:
        self.seen.add(key)
        value = self.table.get(key, default)
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
            names = " or ".join(k.__name__ for k in _as_tuple(kind))
            raise self.error(key, f"expected {names}, got {value!r}", "correct the value")
        return value

    def strings(self, key: str, default: list[str]) -> list[str]:
        values = self.get(key, list, default)
        if not all(isinstance(v, str) and v for v in values):
            raise self.error(key, "expected a list of non-empty strings", "correct the list")
        return values

    def reject_unknown(self) -> None:
        unknown = sorted(set(self.table) - self.seen)
        if unknown:
            raise self.error(
                unknown[0],
                "unknown key",
                f"remove it; known keys are {', '.join(sorted(self.seen))}",
            )


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def parse_config(document: dict, source: Path, *, apt_dir: Path = Path("/etc/apt")) -> Config:
    """Validate a parsed TOML document; errors name the file, the key and the reason."""
    top = _Section(source, (), document)
    server = _Section(source, ("server",), top.get("server", dict, {}))
    listen = tuple(_parse_listen(server, v) for v in server.strings("listen", ["0.0.0.0:3142"]))
    data_dir = Path(str(server.get("data_dir", str, str(default_data_dir()))))
    admin_token = str(server.get("admin_token", str, ""))
    status_from = tuple(_parse_network(server, v) for v in server.strings("status_from", ANYONE))
    workers = server.table.get("workers")
    if workers is not None:
        workers = check_worker_count(workers, f"{source}: {toml_key('server', 'workers')}")
    server.seen.add("workers")
    fetch_log_days = _parse_fetch_log_days(server)
    server.reject_unknown()

    tables = top.get("upstreams", dict, {})
    upstreams = {name: _parse_upstream(source, name, t) for name, t in tables.items()}
    if not upstreams:
        upstreams = discover_upstreams(apt_dir)
    branches = {
        name: _parse_branch(source, name, t) for name, t in top.get("branches", dict, {}).items()
    }
    top.reject_unknown()
    return Config(
        listen,
        data_dir,
        upstreams,
        branches,
        admin_token,
        source,
        status_from=status_from,
        workers=workers,
        fetch_log_days=fetch_log_days,
    )


def _parse_fetch_log_days(server: _Section) -> int:
    # Any TOML value is read, so that the error says what is wanted whatever was written.
    days = server.get("fetch_log_days", (int, float, str, bool), DEFAULT_FETCH_LOG_DAYS)
    if isinstance(days, bool) or not isinstance(days, int) or days <= 0:
        raise server.error(
            "fetch_log_days",
            f"{days!r} is not a positive whole number of days",
            f"write e.g. fetch_log_days = {DEFAULT_FETCH_LOG_DAYS}",
        )
    return days


def _parse_network(server: _Section, text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise server.error(
            "status_from",
            f"{text!r} is not an address or a network",
            'list addresses or networks such as "127.0.0.1", "10.0.0.0/8" or "::1/128"',
        ) from None


def parse_listen_address(value: str) -> tuple[str, int] | None:
    """("host", port) of `HOST:PORT` or `[v6]:PORT`; None if it is not one."""
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


def _parse_listen(section: _Section, value: str) -> tuple[str, int]:
    address = parse_listen_address(value)
    if address is None:
        raise section.error("listen", f"{value!r} is not HOST:PORT", 'write e.g. "0.0.0.0:3142"')
    return address


def _host_list(section: _Section, key: str, default: list[str], example: str) -> list[str]:
    """A list of HOST or HOST:PORT entries (proxy_hosts, redirect_hosts)."""
    hosts = section.strings(key, default)
    for host in hosts:
        if not re.fullmatch(r"[A-Za-z0-9.-]+(:\d{1,5})?", host):
            raise section.error(
                key, f"{host!r} is not HOST or HOST:PORT", f'write e.g. "{example}"'
            )
    return hosts


def _parse_upstream(source: Path, name: str, table: object) -> Upstream:
    section = _Section(source, ("upstreams", name), table)
    if name in RESERVED_UPSTREAM_NAMES:
        raise section.error(
            "",
            f"the name {name!r} is reserved for debcache's own URLs",
            f"rename the upstream; {', '.join(sorted(RESERVED_UPSTREAM_NAMES))} are reserved",
        )
    if not NAME_PATTERN.fullmatch(name):
        raise section.error(
            "", "not a valid upstream name", "use letters, digits, '.', '_', '+' and '-' only"
        )
    written = section.strings("urls", [])
    if not written:
        raise section.error(
            "urls", "missing", 'list at least one, e.g. ["http://mirror.example.org/debian"]'
        )
    for url in written:  # checked as written, so that the message quotes what the user wrote
        reason = url_problem(url)
        if reason:
            raise section.error("urls", f"{url!r} {reason}", URL_REMEDIES[reason])
    urls = tuple(u.rstrip("/") for u in written)
    keyring = section.get("keyring", str, str(DEBIAN_ARCHIVE_KEYRING))
    if not Path(keyring).is_file():
        raise section.error(
            "keyring",
            f"{keyring} does not exist",
            "give the archive's keyring file (as for apt's signed-by)",
        )
    hosts = _host_list(section, "proxy_hosts", [host_of(u) for u in urls], "mirror.example.org")
    timeout = section.get("timeout", (int, float), DEFAULT_TIMEOUT)
    if timeout <= 0:
        raise section.error("timeout", "must be positive", "give the seconds, e.g. 30")
    window = section.get("coalesce_window", (int, float), DEFAULT_COALESCE_WINDOW)
    if not 0 <= window <= 60:
        raise section.error("coalesce_window", "must be 0 to 60 seconds", "e.g. 1; 0 is strict")
    redirect_hosts = _host_list(section, "redirect_hosts", [], "cdn.mirror.example.org")
    written_size = section.get("max_file_size", (str, int), "4G")
    max_file_size = size_in_bytes(str(written_size))
    if not max_file_size:
        raise section.error(
            "max_file_size", f"{written_size!r} is not a positive size", 'write e.g. "4G" or "512M"'
        )
    deadline = parse_duration(
        section, str(section.get("deadline", (str, int, float), "1h")), "deadline"
    )
    if deadline <= 0:
        raise section.error("deadline", "must be positive", 'write e.g. "1h" or "20m"')
    section.reject_unknown()
    hosts = tuple(h.lower() for h in hosts)
    return Upstream(
        name,
        urls,
        Path(keyring),
        hosts,
        float(timeout),
        float(window),
        tuple(h.lower() for h in redirect_hosts),
        max_file_size,
        deadline,
    )


def _parse_branch(source: Path, name: str, table: object) -> Branch:
    section = _Section(source, ("branches", name), table)
    if not NAME_PATTERN.fullmatch(name):
        raise section.error("", "not a valid branch name", "use letters, digits, '.', '_', '-'")
    fill = section.get("fill", str, "strict")
    if fill not in ("strict", "verified"):
        raise section.error("fill", f"{fill!r} is not a fill mode", 'use "strict" or "verified"')
    resign = section.get("resign", bool, False)
    grace = parse_duration(section, str(section.get("grace", str, "1h")))
    section.reject_unknown()
    return Branch(name, str(fill), bool(resign), grace)


def parse_duration(section: _Section, text: str, key: str = "grace") -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd]?)", text.strip())
    if not match:
        raise section.error(key, f"{text!r} is not a duration", 'write e.g. "90s", "30m" or "1h"')
    scale = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return float(match.group(1)) * scale


def size_in_bytes(text: str) -> int | None:
    """Bytes of a size as written, e.g. "4G", "512M", "800k", "1000"; None if it is none."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)i?[bB]?\s*", text)
    if not match:
        return None
    scale = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}[match.group(2).lower()]
    return int(float(match.group(1)) * scale)


NOT_HTTP = "is not an http:// or https:// URL"
NO_HOST = "has no host"
BAD_HOST = "has an invalid host or port"
QUERY = "must not have a query or fragment"
URL_REMEDIES = {
    NOT_HTTP: "use an http:// or https:// URL",
    NO_HOST: 'write the mirror\'s host and path, e.g. "http://mirror.example.org/debian"',
    BAD_HOST: 'write HOST or HOST:PORT after http://, e.g. "http://mirror.example.org:8080/debian"',
    QUERY: "remove what follows ? or #",
}


def url_problem(url: str) -> str | None:
    """Why `url` can't be an upstream base URL (a key of URL_REMEDIES), or None."""
    try:
        parts = urlsplit(url)
        hostname, _ = parts.hostname, parts.port
    except ValueError:  # "http://[::1" or a port that is not a number
        return BAD_HOST
    if parts.scheme not in ("http", "https"):
        return NOT_HTTP
    if not hostname:
        return NO_HOST
    if parts.query or parts.fragment:
        return QUERY
    return None


def host_of(url: str) -> str:
    """`host` or `host:port` as a forward-proxy request names it."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


# --- apt sources ------------------------------------------------------------------


@dataclass(frozen=True)
class AptSource:
    uri: str
    signed_by: str | None


def discover_upstreams(apt_dir: Path = Path("/etc/apt")) -> dict[str, Upstream]:
    """Derive upstreams from the host's apt sources; name = last segment of the archive path."""
    upstreams: dict[str, Upstream] = {}
    for source in read_apt_sources(apt_dir):
        if url_problem(source.uri):
            continue  # cdrom:, file:, mirror+file: and friends can't be proxied
        url = source.uri.rstrip("/")
        name = upstream_name_for(url)
        keyring = _keyring_path(source.signed_by)
        known = upstreams.get(name)
        if known is None:
            upstreams[name] = Upstream(name, (url,), keyring, (host_of(url),))
        elif url not in known.urls:
            # Same archive name from a second host: a mirror of the same archive, so failover.
            upstreams[name] = Upstream(
                name, (*known.urls, url), known.keyring, (*known.proxy_hosts, host_of(url))
            )
    return upstreams


def upstream_name_for(url: str) -> str:
    """`http://mirror.example.org/debian-security` gives `debian-security`."""
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    candidate = segments[-1] if segments else str(parts.hostname).split(".")[0]
    name = re.sub(r"[^A-Za-z0-9._+-]", "-", candidate).lstrip("._+-") or "archive"
    return f"{name}-archive" if name in RESERVED_UPSTREAM_NAMES else name


def _keyring_path(signed_by: str | None) -> Path | None:
    if not signed_by:
        return DEBIAN_ARCHIVE_KEYRING
    if signed_by.lstrip().startswith("-----BEGIN"):
        return None  # an inline key; it can't be handed to gpgv as a file
    return Path(signed_by.split(",")[0].strip())


def read_apt_sources(apt_dir: Path) -> list[AptSource]:
    """Every enabled `deb`/`deb-src` source, in apt's order: sources.list, then sources.list.d."""
    sources = _read_one_line_file(apt_dir / "sources.list")
    parts = apt_dir / "sources.list.d"
    for path in sorted(parts.glob("*")) if parts.is_dir() else []:
        if path.suffix == ".list":
            sources += _read_one_line_file(path)
        elif path.suffix == ".sources":
            sources += _read_deb822_file(path)
    return sources


ONE_LINE_ENTRY = re.compile(r"^\s*(deb|deb-src)\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+\S+")


def _read_one_line_file(path: Path) -> list[AptSource]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    sources = []
    for line in lines:
        match = ONE_LINE_ENTRY.match(line.split("#", 1)[0])
        if match:
            options = dict(o.split("=", 1) for o in (match.group(2) or "").split() if "=" in o)
            sources.append(AptSource(match.group(3), options.get("signed-by")))
    return sources


def _read_deb822_file(path: Path) -> list[AptSource]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            paragraphs = list(deb822.Deb822.iter_paragraphs(f, use_apt_pkg=False))
    except OSError:
        return []
    sources = []
    for paragraph in paragraphs:
        if paragraph.get("Enabled", "yes").strip().lower() == "no":
            continue
        if not {"deb", "deb-src"} & set(paragraph.get("Types", "").split()):
            continue
        for uri in paragraph.get("URIs", "").split():
            sources.append(AptSource(uri, paragraph.get("Signed-By")))
    return sources
