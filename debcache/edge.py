"""An edge tier: the nginx configuration of a cache in front of debcache.

`/manifest/<id>/...` never changes, so an edge keeps it for a year. `/pin/...`
answers carry their sha256 as ETag and `Cache-Control: no-cache`: an edge stores
them anyway (nginx refuses a `no-cache` answer unless told to ignore the header),
revalidates them with the origin once they are a second old, and serves them
stale when the origin errs, so pinned installs go on while debcache is down.
Everything else (recordings, the live mirror paths, the status page) goes through
uncached and unbuffered: a recording sees every request.

Every value substituted into the template is checked first: nothing a user
passes can end a directive or open a block (`;`, `{`, quotes, whitespace, `$`).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from string import Template
from urllib.parse import urlsplit

from .config import parse_listen_address, url_problem
from .errors import ConfigError

DEFAULT_LISTEN = "0.0.0.0:3142"
DEFAULT_CACHE_DIR = "/var/cache/nginx/debcache"
DEFAULT_MAX_SIZE = "20g"
DEFAULT_LOG_DIR = "/var/log/nginx"
# A pin's answer is fresh this long at the edge, then revalidated (a 304 when the
# branch still points at the same bytes). nginx counts it in whole seconds, so a
# promote reaches an edge's clients 1 to 2 seconds later; 1s is nginx's minimum.
PIN_FRESH = "1s"
# Waiting clients of a file being fetched for the cache: past proxy_cache_lock_timeout a
# waiter fetches it itself, uncached; a slow big .deb must not turn a herd into N fetches.
LOCK_TIMEOUT = "5m"

# Characters of a path that mean nothing to nginx's configuration syntax.
_SAFE_PATH = re.compile(r"/[A-Za-z0-9._+@%,=:/-]*")
_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")
# nginx's sizes: a number and an optional k or m or g (either case); no fractions.
_NGINX_SIZE = re.compile(r"[1-9][0-9]*[kKmMgG]?")


@dataclass(frozen=True)
class EdgeSettings:
    """Checked values, each ready to be written into nginx.conf as one word."""

    origin_scheme: str  # http or https
    origin_address: str  # HOST:PORT, [v6]:PORT
    origin_host: str  # the TLS server name of an https origin
    listen: str
    cache_dir: str
    max_size: str
    log_dir: str


def edge_settings(
    origin: str,
    listen: str = DEFAULT_LISTEN,
    cache_dir: str = DEFAULT_CACHE_DIR,
    max_size: str = DEFAULT_MAX_SIZE,
    log_dir: str = DEFAULT_LOG_DIR,
) -> EdgeSettings:
    """The options of `debcache edge-config`, checked; ConfigError names the bad one."""
    scheme, address, host = _origin(origin)
    return EdgeSettings(
        origin_scheme=scheme,
        origin_address=address,
        origin_host=host,
        listen=_listen(listen),
        cache_dir=_directory("--cache-dir", cache_dir, "/var/cache/nginx/debcache"),
        max_size=_size(max_size),
        log_dir=_directory("--log-dir", log_dir, "/var/log/nginx"),
    )


def _origin(url: str) -> tuple[str, str, str]:
    remedy = "write the URL debcache serves at, e.g. --origin http://cache.example.org:3142"
    if url_problem(url) or not _one_word(url):
        raise ConfigError(f"--origin {url!r} is not an http:// or https:// URL", remedy)
    parts = urlsplit(url)
    if parts.path not in ("", "/"):
        raise ConfigError(f"--origin {url!r} has a path; debcache serves at /", remedy)
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"--origin {url!r} has credentials; the edge sends none", remedy)
    host = str(parts.hostname)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, _address(host, port, "--origin", url, remedy), host


def _listen(value: str) -> str:
    remedy = "write e.g. --listen 0.0.0.0:3142 or --listen [::]:3142"
    address = parse_listen_address(value) if _one_word(value) else None
    if address is None:
        raise ConfigError(f"--listen {value!r} is not HOST:PORT", remedy)
    return _address(*address, "--listen", value, remedy)


def _address(host: str, port: int, option: str, value: str, remedy: str) -> str:
    """`host:port` as nginx writes it (IPv6 in brackets); ConfigError for another host."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if not _HOST_NAME.fullmatch(host):
            raise ConfigError(f"{option} {value!r} has an invalid host", remedy) from None
        return f"{host}:{port}"
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _directory(option: str, value: str, example: str) -> str:
    if not _SAFE_PATH.fullmatch(value):
        raise ConfigError(
            f"{option} {value!r} is not an absolute path of letters, digits and ._+@%,=:/-",
            f"write e.g. {option} {example}",
        )
    return value.rstrip("/") or "/"


def _size(value: str) -> str:
    if not _NGINX_SIZE.fullmatch(value):
        raise ConfigError(
            f"--max-size {value!r} is not a size as nginx writes it",
            "write a number with k, m or g after it, e.g. --max-size 20g",
        )
    return value


def _one_word(value: str) -> bool:
    """No character that ends or quotes a word of nginx's configuration."""
    return not re.search(r"[\s;{}'\"\\$#]", value)


class _NginxTemplate(Template):
    delimiter = "@"  # nginx's own variables are $name


_TEMPLATE = _NginxTemplate("""\
# An edge cache in front of debcache, written by `debcache edge-config`.
# Origin: @origin_scheme://@origin_address/
#
# Start it with `nginx -c THIS_FILE`, or install it as /etc/nginx/nginx.conf.
# It has no `user` and no `pid` directive: nginx's defaults (workers as nobody when
# started as root; Debian's /run/nginx.pid, which nginx.service expects) apply.

worker_processes auto;
# A proxied request holds two descriptors (client, origin), a cached one a file too.
worker_rlimit_nofile 16384;
error_log @log_dir/debcache-edge-error.log warn;

events {
    worker_connections 4096;
}

http {
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    server_tokens off;

    # cache= says how the edge answered: HIT, MISS, REVALIDATED, EXPIRED, STALE, ...
    log_format debcache_edge '$remote_addr [$time_local] "$request" $status $body_bytes_sent '
                             'cache=$upstream_cache_status origin=$upstream_status '
                             '$request_time';
    access_log @log_dir/debcache-edge-access.log debcache_edge;

    # Everything the edge writes lives in its cache directory (which must exist).
    client_body_temp_path @cache_dir/temp-body;
    proxy_temp_path @cache_dir/temp-proxy;
    fastcgi_temp_path @cache_dir/temp-fastcgi;
    uwsgi_temp_path @cache_dir/temp-uwsgi;
    scgi_temp_path @cache_dir/temp-scgi;
    # Entries stay a year unless max_size needs the room: a pin's files stay
    # servable through a long outage of the origin.
    proxy_cache_path @cache_dir/cache levels=1:2 keys_zone=debcache:64m
                     max_size=@max_size inactive=365d use_temp_path=off;

    upstream debcache_origin {
        server @origin_address;
        keepalive 64;
    }

    server {
        listen @listen;

        proxy_http_version 1.1;
        proxy_set_header Connection "";
        # debcache names the edge in the URLs it writes (the /pin/ hints).
        proxy_set_header Host $http_host;
        # debcache does not read it (its fetch log names the edge as the client);
        # kept for the origin's own logs and for proxies between.
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_connect_timeout 5s;
@tls
        # A manifest's URL always names the same bytes: kept for a year, fetched once.
        location /manifest/ {
            proxy_pass @origin_scheme://debcache_origin;
            proxy_cache debcache;
            proxy_cache_valid 200 365d;
            proxy_cache_lock on;
            proxy_cache_lock_timeout @lock_timeout;
            proxy_cache_lock_age @lock_timeout;
            proxy_cache_use_stale error timeout http_500 http_502 http_503 http_504 updating;
            add_header X-Debcache-Edge $upstream_cache_status always;
        }

        # A branch's pin: debcache sends Cache-Control: no-cache and the sha256 as ETag.
        # Stored anyway, fresh for @pin_fresh, then revalidated (If-None-Match: a 304
        # until a promote or rollback changes the file); stale while the origin is down.
        location /pin/ {
            proxy_pass @origin_scheme://debcache_origin;
            proxy_cache debcache;
            proxy_ignore_headers Cache-Control Expires;
            proxy_cache_valid 200 @pin_fresh;
            proxy_cache_revalidate on;
            proxy_cache_lock on;
            proxy_cache_lock_timeout @lock_timeout;
            proxy_cache_lock_age @lock_timeout;
            proxy_cache_use_stale error timeout http_500 http_502 http_503 http_504 updating;
            add_header X-Debcache-Edge $upstream_cache_status always;
        }

        # The status page and the API: read-only through an edge. debcache lets a
        # loopback client change things, and an edge on its host would be one.
        location /_/ {
            limit_except GET {
                deny all;
            }
            proxy_pass @origin_scheme://debcache_origin;
            proxy_buffering off;
        }

        # Recordings (/record/NAME/...) and the live mirror paths (/UPSTREAM/...): every
        # request reaches debcache, streamed as it arrives, so a recording is complete.
        location / {
            limit_except GET {
                deny all;
            }
            proxy_pass @origin_scheme://debcache_origin;
            proxy_buffering off;
        }
    }
}
""")

_TLS = """\
        # The origin's certificate is checked against the system's CAs.
        proxy_ssl_server_name on;
        proxy_ssl_name @origin_host;
        proxy_ssl_verify on;
        proxy_ssl_trusted_certificate /etc/ssl/certs/ca-certificates.crt;
"""


def edge_config(settings: EdgeSettings) -> str:
    """A whole nginx.conf for an edge cache in front of the origin in `settings`."""
    values = {
        "origin_scheme": settings.origin_scheme,
        "origin_address": settings.origin_address,
        "origin_host": settings.origin_host,
        "listen": settings.listen,
        "cache_dir": settings.cache_dir,
        "max_size": settings.max_size,
        "log_dir": settings.log_dir,
        "pin_fresh": PIN_FRESH,
        "lock_timeout": LOCK_TIMEOUT,
    }
    tls = _NginxTemplate(_TLS).substitute(values) if settings.origin_scheme == "https" else ""
    return _TEMPLATE.substitute(values, tls=tls)
