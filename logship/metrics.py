"""Prometheus metrics (prometheus-client) and the HTTP endpoint for /metrics, /healthz
and /api/status.

Each agent has its own registry. Hot paths resolve their labelled children once (at
worker start) and only call inc() per batch. Any other path is a 404, so that a
misdirected health probe fails instead of reading the metrics page as a 200.
"""

from __future__ import annotations

import json
import logging
import platform
import threading
from typing import Any, Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, Info,
                               ProcessCollector, disable_created_metrics, make_wsgi_app)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from logship import __version__

log = logging.getLogger(__name__)


class Metrics:
    def __init__(self) -> None:
        disable_created_metrics()       # a *_created series per counter only doubles a scrape
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        Info("logship_build", "The running logship.", registry=r).info(
            {"version": __version__, "python": platform.python_version()})
        self.lines_read = Counter("logship_lines_read", "Lines read from files, before filters "
                                  "and multiline.", ["topic"], registry=r)
        self.records_sent = Counter("logship_records_sent", "Records acknowledged by Kafka (a "
                                    "multiline event is one record, a filtered line none).",
                                    ["topic"], registry=r)
        self.bytes_sent = Counter("logship_bytes_sent", "Record value bytes acknowledged by "
                                  "Kafka.", ["topic"], registry=r)
        self.send_errors = Counter("logship_send_errors", "Records Kafka failed to acknowledge.",
                                   ["topic"], registry=r)
        self.lines_skipped = Counter("logship_lines_skipped",
                                     "Lines deliberately not shipped, whole or in part "
                                     "(too_large, truncated, filtered).",
                                     ["topic", "reason"], registry=r)
        self.invalid_json = Counter("logship_lines_invalid_json",
                                    "Lines of a json_message entry that are not a JSON object "
                                    "(shipped as a string).", ["topic"], registry=r)
        self.workers_running = Gauge("logship_workers_running",
                                     "Files followed per etcd key ('config' for logs:).", ["key"],
                                     registry=r)
        self.files_unfollowed = Gauge("logship_files_unfollowed",
                                      "Files that glob entries match but that are not followed: "
                                      "files.max_files reached.", registry=r)
        self.worker_restarts = Counter("logship_worker_restarts", "Worker restarts after a failure.",
                                       ["topic"], registry=r)
        self.manager_restarts = Counter("logship_manager_restarts",
                                        "Manager restarts after a crash.", ["key"], registry=r)
        self.etcd_errors = Counter("logship_etcd_errors", "etcd sessions lost or refused.", ["key"],
                                   registry=r)
        self.value_errors = Counter("logship_etcd_value_errors",
                                    "etcd values or entries refused.", ["key"], registry=r)
        self.config_reloads = Counter("logship_config_reloads", "Config reloads by result.",
                                      ["result"], registry=r)
        self.in_flight_bytes = Gauge("logship_in_flight_bytes",
                                     "Memory of the lines read and not yet acknowledged "
                                     "(values and a per-record estimate), against "
                                     "kafka.buffer_bytes.", registry=r)
        self.kafka_up = Gauge("logship_kafka_up",
                              "1 while Kafka takes and acknowledges lines, 0 during an outage.",
                              registry=r)
        self.kafka_brokers_unreachable = Gauge(
            "logship_kafka_brokers_unreachable",
            "Brokers the Kafka client cannot reach while the others serve its lines.",
            registry=r)
        self.kafka_errors = Counter("logship_kafka_errors",
                                    "Signs of a Kafka outage, by reason (no_ack, metadata, "
                                    "transport, resolve, timeout, all_brokers_down, queue_full).",
                                    ["reason"], registry=r)
        self.transactions = Counter("logship_kafka_transactions",
                                    "Kafka transactions ended (kafka.delivery: exactly-once), by "
                                    "result (committed, aborted).", ["result"], registry=r)
        self.transaction_seconds = Histogram(
            "logship_kafka_transaction_commit_seconds",
            "Time to commit a transaction, the positions written with it.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)
        self.transaction_records = Histogram(
            "logship_kafka_transaction_records", "Records per committed transaction.",
            buckets=(1, 10, 100, 1000, 5000, 10_000, 25_000, 50_000, 100_000), registry=r)
        self.status_written = Gauge("logship_status_written_timestamp_seconds",
                                    "When the status document was last written to etcd (unix "
                                    "time; 0: not yet). It is rewritten only when it changed.",
                                    registry=r)
        self.status_current = Gauge("logship_status_current_timestamp_seconds",
                                    "When the status document in etcd was last known to be "
                                    "current: written, or unchanged with its lease kept alive "
                                    "(unix time; 0: not yet).", registry=r)
        self.checkpoint_errors = Counter("logship_checkpoint_save_errors",
                                         "Failed saves of the read offsets to state_dir.",
                                         registry=r)

    def collect_lag(self, lag: Callable[[], dict[str, int]]) -> None:
        """`logship_lag_bytes{topic}`, computed at scrape time from the workers."""
        self.registry.register(_LagCollector(lag))

    def set_running(self, counts: dict[str, int]) -> None:
        """Publish per-key file counts; a key that was removed disappears."""
        self.workers_running.clear()
        for key, count in counts.items():
            self.workers_running.labels(key).set(count)


class _LagCollector(Collector):
    def __init__(self, lag: Callable[[], dict[str, int]]) -> None:
        self._lag = lag

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("logship_lag_bytes", "Bytes written to the followed files "
                                   "and not yet acknowledged by Kafka.", labels=["topic"])
        for topic, lag in sorted(self._lag().items()):
            family.add_metric([topic], lag)
        yield family


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not events an operator cares about."""


class MetricsServer:
    """Serves /metrics, /healthz and /api/status on its own thread until stop()."""

    def __init__(self, metrics: Metrics, listen: tuple[str, int],
                 health: Callable[[], str | None], status: Callable[[], dict]) -> None:
        self._metrics_app = make_wsgi_app(metrics.registry)
        self._health = health
        self._status = status
        self._server: WSGIServer = make_server(listen[0], listen[1], self._app,
                                               handler_class=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics",
                                        kwargs={"poll_interval": 0.5}, daemon=True)
        self.address = f"{listen[0]}:{self._server.server_port}"

    def _app(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO")
        if path == "/metrics":
            return self._metrics_app(environ, start_response)
        if path == "/healthz":
            problem = self._health()
            start_response("503 Service Unavailable" if problem else "200 OK",
                           [("Content-Type", "text/plain")])
            return [f"unhealthy: {problem}\n".encode() if problem else b"ok\n"]
        if path == "/api/status":
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps(self._status(), indent=2).encode() + b"\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics, /healthz or /api/status\n"]

    def start(self) -> None:
        self._thread.start()
        log.info("metrics on http://%s/metrics", self.address)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
