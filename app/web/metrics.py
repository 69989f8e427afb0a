"""`/metrics` for Prometheus: the status figures, read from the database at each scrape, and the
counts of the SMTP, worker and IMAP processes, summed from their files (app/metrics.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.db import session_scope
from app.metrics import MetricsFiles
from app.models.base import utcnow
from app.web.status import server_status


class StatusCollector(Collector):
    """Gauges computed per scrape, so every web process reports the same truth (the database)."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    def collect(self) -> Iterator[Metric]:
        now = utcnow()
        with session_scope(self.database_url) as session:
            status = server_status(session, now)
        yield GaugeMetricFamily(
            "postwarden_messages_stored_today",
            "Messages stored since 00:00 UTC.",
            value=status.messages_today,
        )
        yield GaugeMetricFamily(
            "postwarden_outgoing_queue_size", "Rows in the outgoing queue.", value=status.queue_size
        )
        yield GaugeMetricFamily(
            "postwarden_outgoing_queue_due", "Outgoing queue rows due for an attempt.", value=status.queue_due
        )
        oldest = status.oldest_queued
        yield GaugeMetricFamily(
            "postwarden_outgoing_queue_oldest_age_seconds",
            "Age of the oldest row in the outgoing queue (0 when it is empty).",
            value=0.0 if oldest is None else max(0.0, (now - oldest).total_seconds()),
        )
        started = GaugeMetricFamily(
            "postwarden_job_last_started_timestamp_seconds",
            "Start of the latest run of a job.",
            labels=["job"],
        )
        finished = GaugeMetricFamily(
            "postwarden_job_last_finished_timestamp_seconds",
            "End of the latest run of a job (absent while it runs).",
            labels=["job"],
        )
        ran = GaugeMetricFamily(
            "postwarden_job_ever_ran", "1 if the job has a recorded run, 0 if it never ran.", labels=["job"]
        )
        for job, run in status.periodic:
            ran.add_metric([job.name], 0 if run is None else 1)
            if run is None:
                continue
            started.add_metric([job.name], run.started.timestamp())
            if run.finished is not None:
                finished.add_metric([job.name], run.finished.timestamp())
        yield started
        yield finished
        yield ran


def metrics_registry(database_url: str, metrics_dir: Path) -> CollectorRegistry:
    """A registry of our own (not the global one), so several apps can live in one process (tests)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(database_url))
    registry.register(MetricsFiles(metrics_dir))
    return registry
