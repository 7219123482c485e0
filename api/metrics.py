"""Prometheus metrics at ``/metrics``: requests and latency per endpoint, index size and freshness, the process.

Each app has its own ``CollectorRegistry``: the global default registry would make a second ``create_app`` in one
process (every test does one) fail with duplicate metric names, and would mix two apps' counts. Endpoints are
labelled by their URL rule (``/api/articles/<article_id:article_id>``), never by the raw path: one time series per
route, however many article ids or junk URLs are requested; methods likewise (``KNOWN_METHODS``, else ``other``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from datetime import datetime

from flask import Flask, Response, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from search.alerts.saved import delivery_counts
from search.errors import NewsdeskError
from search.memory import memory_report
from search.service import SearchService
from search.storage.manifest import read_manifest
from search.storage.watchstate import source_states

# Seconds. Health checks answer in ~1 ms and searches in tens of ms on the sample; big indexes take longer.
log = logging.getLogger("newsdesk.api")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNMATCHED = "<unmatched>"  # the label of requests no route matched (404s, bad encoding)
# The ``method`` label's values: HTTP's registered methods, and ``other`` for anything a client invents. A request
# line may carry any token as its method, and one series per invented method let 3,000 requests grow a scrape to
# 65 MB.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"})
OTHER_METHOD = "other"


class IndexCollector:
    """Index size and freshness, read when Prometheus scrapes (never per request).

    Counts and the store generation come from ``service.health()``, i.e. the SQLite store this process serves; the
    last update is the manifest's ``updated_at`` read from disk, so a re-index by another process shows up.
    """

    def __init__(self, service: SearchService) -> None:
        self.service = service
        # the index parts' sizes (search/memory.py), kept while the served index and its generation stay: walking
        # a large vocabulary on every scrape would cost a fraction of a second each time
        self._parts: tuple[tuple[int, int], dict[str, int]] | None = None

    def describe(self) -> Iterable[Metric]:
        return []  # names are fixed below; describing them must not touch the index at registration time

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("newsdesk_index_up", "1 when the index can be read, 0 when it cannot (see the log).")
        try:
            health = self.service.health()
        except NewsdeskError as exc:  # a scrape of a damaged index still reports the process; details to the log
            log.error("metrics: the index cannot be read: %s: %s", exc.code, exc.message)
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        index = str(health["index"])
        info = InfoMetricFamily("newsdesk_index", "The index being served.", labels=["index"])
        manifest = self.service.index.manifest
        info.add_metric(
            [index],
            {
                "model": str(health["model"]),
                "backend": str(manifest["model"].get("backend", "torch")),
                "faiss_factory": str(manifest["faiss"].get("factory", "")),
            },
        )
        yield info
        for name, value, text in (
            ("newsdesk_index_articles", health["articles"], "Articles in the index."),
            ("newsdesk_index_passages", health["passages"], "Passages (headline and body chunks) in the index."),
            (
                "newsdesk_index_generation",
                health["generation"],
                "Write generation of the store; it grows with every write.",
            ),
        ):
            gauge = GaugeMetricFamily(name, text, labels=["index"])
            gauge.add_metric([index], float(value))
            yield gauge
        memory = GaugeMetricFamily(
            "newsdesk_memory_bytes",
            "Resident memory by component (vectors, postings, catalog, owners, profiles, model...), the process's "
            "RSS (component rss) and what no component accounts for (other); see the README's stats section.",
            labels=["index", "component"],
        )
        for component, size in self._memory().items():
            memory.add_metric([index, component], float(size))
        yield memory
        updated = self._last_update()
        if updated is not None:
            gauge = GaugeMetricFamily(
                "newsdesk_index_last_update_timestamp_seconds",
                "When the index on disk was last written (manifest updated_at), as a Unix time.",
                labels=["index"],
            )
            gauge.add_metric([index], updated)
            yield gauge

    def _memory(self) -> dict[str, int]:
        index = self.service.index
        key = (id(index), index.generation)
        if self._parts is None or self._parts[0] != key:
            self._parts = (key, index.memory())
        return memory_report(self._parts[1], self.service.embedder)

    def _last_update(self) -> float | None:
        try:
            directory = self.service.index.directory
            manifest = read_manifest(directory) if directory is not None else self.service.index.manifest
        except Exception:  # a scrape during a swap or of a damaged index still reports everything else
            manifest = self.service.index.manifest
        stamp = manifest.get("updated_at") or manifest.get("created_at")
        try:
            return datetime.fromisoformat(str(stamp)).timestamp()
        except ValueError:
            return None


class _StoreCollector:
    """Figures read from the served index's SQLite store at each scrape (never per request), so every server process
    on the index reports the same ones, whichever process did the work."""

    def __init__(self, service: SearchService) -> None:
        self.service = service

    def describe(self) -> Iterable[Metric]:
        return []  # names are fixed in collect; describing them must not touch the index at registration time


class WatchCollector(_StoreCollector):
    """What ``newsdesk watch`` did, per source, read from the index's store at each scrape (search/storage/
    watchstate.py): the watcher records it with its writes, so any server on the index reports it, whichever process
    watches. Counters are cumulative over the index's life; nothing is reported for an index never watched."""

    def collect(self) -> Iterable[Metric]:
        try:
            states = source_states(self.service.index.sqlite.connection())
        except NewsdeskError:  # a replica (no SQLite store) or a damaged index: the index collector says so
            return
        if not states:
            return
        families = {
            "seen": CounterMetricFamily(
                "newsdesk_watch_items_seen", "Feed items and pages newsdesk watch read, by source.", labels=["source"]
            ),
            "ingested": CounterMetricFamily(
                "newsdesk_watch_items_ingested",
                "New or changed items newsdesk watch wrote into the index, by source.",
                labels=["source"],
            ),
            "errors": CounterMetricFamily(
                "newsdesk_watch_errors",
                "Polls of a source that failed (timeout, HTTP error, garbage).",
                labels=["source"],
            ),
        }
        skipped = CounterMetricFamily(
            "newsdesk_watch_items_skipped",
            "Items newsdesk watch could not use, by source and reason (no text, bad encoding, ...).",
            labels=["source", "reason"],
        )
        success = GaugeMetricFamily(
            "newsdesk_watch_last_success_timestamp_seconds",
            "When a poll of the source last succeeded, as a Unix time.",
            labels=["source"],
        )
        for source, state in states.items():
            families["seen"].add_metric([source], float(state.seen))
            families["ingested"].add_metric([source], float(state.ingested))
            families["errors"].add_metric([source], float(state.errors))
            for reason, n in state.skipped.items():
                skipped.add_metric([source, reason], float(n))
            if state.last_success is not None:
                success.add_metric([source], state.last_success)
        yield from families.values()
        yield skipped
        yield success


class AlertCollector(_StoreCollector):
    """Webhook deliveries of saved searches (search/alerts/delivery.py), counted in the index's store by whichever
    server process posted; cumulative over the index's life (deleting an alert does not take its posts back)."""

    def collect(self) -> Iterable[Metric]:
        try:
            counts = delivery_counts(self.service.index.sqlite.connection())
        except NewsdeskError:
            return
        if not counts:
            return
        for name, help_text in (
            ("delivered", "Alert matches posted to their webhook (a 2xx answer)."),
            ("failed_attempts", "Webhook posts of alert matches that failed (error, timeout, non-2xx); retried."),
            ("gave_up", "Alert matches whose webhook failed alert_max_attempts times and is no longer retried."),
        ):
            family = CounterMetricFamily(f"newsdesk_alert_webhook_{name}", help_text)
            family.add_metric([], float(counts.get(name, 0)))
            yield family
        pending = GaugeMetricFamily("newsdesk_alert_webhook_pending", "Alert matches waiting for their webhook post.")
        pending.add_metric([], float(counts.get("pending", 0)))
        yield pending


def _exposed_registry(
    registry: CollectorRegistry, index: IndexCollector, watch: WatchCollector, alerts: AlertCollector
) -> CollectorRegistry:
    """What ``/metrics`` serves: this process's registry, or, when ``PROMETHEUS_MULTIPROC_DIR`` is set, the request
    metrics of every server process merged from that directory (prometheus_client's multiprocess mode), with the
    index figures.

    Several processes behind one port (gunicorn workers) each count their own requests, and a scrape reaches one
    of them at random; the merged view is the only one whose counters never go backwards. The directory must be
    empty when the server starts, and set before the workers start, as prometheus_client documents.
    """
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        return registry
    merged = CollectorRegistry()
    MultiProcessCollector(merged, path=path)  # type: ignore[no-untyped-call]
    merged.register(index)
    merged.register(watch)
    merged.register(alerts)
    return merged


def register_metrics(app: Flask, service: SearchService) -> CollectorRegistry:
    """Count and time every request of ``app`` and serve the registry at ``/metrics``.

    Call it before other ``before_request`` hooks (see ``api.logs.register_request_logging``): a hook that answers
    early skips the ones after it, and its request must still be timed.
    """
    registry = CollectorRegistry()
    requests = Counter(
        "newsdesk_http_requests",
        "HTTP requests answered, by method, endpoint (URL rule) and status.",
        ["method", "endpoint", "status"],
        registry=registry,
    )
    latency = Histogram(
        "newsdesk_http_request_duration_seconds",
        "Time from the request reaching Flask to its response being ready, by method and endpoint (URL rule).",
        ["method", "endpoint"],
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )
    index = IndexCollector(service)
    registry.register(index)
    watch = WatchCollector(service)
    registry.register(watch)
    alerts = AlertCollector(service)
    registry.register(alerts)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    exposed = _exposed_registry(registry, index, watch, alerts)

    def start() -> None:
        g.metrics_started = time.perf_counter()

    # Labelled children by label values: ``labels()`` validates and hashes its arguments on every call, which is
    # a measurable share of a fast request; the set of keys is bounded (known methods x URL rules x statuses).
    counters: dict[tuple[str, str, int], Counter] = {}
    timers: dict[tuple[str, str], Histogram] = {}

    def observe(response: Response) -> Response:
        started = g.get("metrics_started")
        endpoint = request.url_rule.rule if request.url_rule is not None else UNMATCHED
        method = request.method if request.method in KNOWN_METHODS else OTHER_METHOD
        key = (method, endpoint, response.status_code)
        counter = counters.get(key)
        if counter is None:
            counter = counters.setdefault(key, requests.labels(key[0], endpoint, str(key[2])))
        counter.inc()
        if started is not None:
            timer = timers.get(key[:2])
            if timer is None:
                timer = timers.setdefault(key[:2], latency.labels(key[0], endpoint))
            timer.observe(time.perf_counter() - started)
        return response

    def metrics() -> Response:
        # the format the scraper asks for: OpenMetrics when it says so, else Prometheus text 0.0.4
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return Response(encode(exposed), content_type=content_type)

    app.before_request(start)
    app.after_request(observe)
    app.add_url_rule("/metrics", endpoint="metrics", view_func=metrics)
    app.extensions["newsdesk.metrics"] = registry
    return registry
