"""Prometheus metrics for /_/metrics (prometheus_client, one registry per server).

Under the supervisor (several server processes), prometheus_client's multiprocess
mode adds up every process's values: each writes them to files in the directory
$PROMETHEUS_MULTIPROC_DIR names, and /_/metrics (the fetcher's) renders them all.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """Counters the server updates as it works; rendered in the Prometheus text format."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = self._counter(
            "debcache_requests",
            "Requests answered, by cache source (none: not an archive file) and status",
            "source",
            "status",
        )
        self.response_bytes = self._counter(
            "debcache_response_bytes", "Bytes of files served whole, by cache source", "source"
        )
        self.upstream_requests = self._counter(
            "debcache_upstream_requests",
            "Requests sent to upstream base URLs, by upstream and outcome",
            "upstream",
            "outcome",
        )
        self.in_flight = Gauge(
            "debcache_downloads_in_flight",
            "Upstream downloads and revalidations under way",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self._count_in_flight: Callable[[], int] | None = None
        self._request_children: dict[tuple[str, int], Counter] = {}
        self._byte_children: dict[str, Counter] = {}

    def _counter(self, name: str, documentation: str, *labels: str) -> Counter:
        return Counter(name, documentation, list(labels), registry=self.registry)

    def count_request(self, source: str, status: int) -> None:
        """Every request the server answers, debcache's own pages and errors included."""
        # The labelled child, looked up once per (source, status): labels() takes a lock
        # and formats its values on every call, on the path of every hit.
        child = self._request_children.get((source, status))
        if child is None:
            child = self._request_children[(source, status)] = self.requests.labels(
                source, str(status)
            )
        child.inc()

    def count_file(self, source: str, status: int, size: int | None, complete: bool) -> None:
        """An archive file's fetch-log row: its bytes count once it went out whole."""
        if complete and size and status == 200:
            child = self._byte_children.get(source)
            if child is None:
                child = self._byte_children[source] = self.response_bytes.labels(source)
            child.inc(size)

    def count_upstream(self, upstream: str, outcome: str) -> None:
        self.upstream_requests.labels(upstream, outcome).inc()

    def track_in_flight(self, count: Callable[[], int]) -> None:
        self._count_in_flight = count
        self.in_flight.set_function(count)

    def render(self) -> bytes:
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not directory:
            return generate_latest(self.registry)
        if self._count_in_flight is not None:  # a function gauge is not shared: set it
            self.in_flight.set(self._count_in_flight())
        everyone = CollectorRegistry()
        multiprocess.MultiProcessCollector(everyone, directory)
        return generate_latest(everyone)
