"""Prometheus counters and histograms, counted where things happen, gathered across processes.

The SMTP workers, the Celery workers and the IMAP server count in prometheus-client's multiprocess
mode: each process adds to memory-mapped files of its own (one write per count, no lock shared with
another process), under `<metrics_dir>/<service>/`; the web process sums every file it finds there
at each scrape (`MetricsFiles`) and adds the gauges it reads from the database (app/web/metrics.py).
Each service is started by one process (the SMTP supervisor, a Celery worker's main process, the
IMAP server) that removes its folder's files first: the counts of its last run would be added to
the new ones (and a process whose pid was used before would go on from that one's). A process that
is not set up (the CLI, tests) counts in memory, where no scrape sees it.

Label values are ours alone and few: a reply code, a verdict reason, a delivery result, a TLS
policy type, a job name. Never an address, a domain or any text from the network: each label has
its known values, and anything else is counted as "other".
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

from prometheus_client import Counter, Histogram, values
from prometheus_client.core import Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from app.queue.tlspolicy import TLSSettings

M = TypeVar("M", bound=MetricWrapperBase)
MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"  # where prometheus-client's values write their files
OTHER = "other"
REPLY_CODE = re.compile(r"[2-5][0-9][0-9]")
TOKEN = re.compile(r"[a-z][a-z0-9_-]{0,39}")  # our own result and reason names
LISTENERS = frozenset({"inbound", "submission", "imap", "imaps"})
DELIVERY_RESULTS = ("delivered", "deferred", "failed")
REPORT_KINDS = frozenset({"dmarc", "tlsrpt"})
REPORT_WAYS = frozenset({"mail", "https"})

# Counted per message or per reply: these labels children are created at the first count, in the
# process that counts (see enable_multiprocess), so no metric here may be without labels.
SMTP_SESSIONS = Counter(
    "postwarden_smtp_sessions", "SMTP sessions admitted, by listener kind.", ["listener"], registry=None
)
SMTP_REPLIES = Counter(
    "postwarden_smtp_replies",
    "SMTP replies sent, by listener kind and reply code.",
    ["listener", "code"],
    registry=None,
)
SMTP_TRANSACTIONS = Counter(
    "postwarden_smtp_transactions",
    "SMTP transactions (DATA) ended, by listener kind and result (accepted, rejected-dmarc, refused...).",
    ["listener", "result"],
    registry=None,
)
SMTP_DATA_SECONDS = Histogram(
    "postwarden_smtp_data_seconds",
    "Seconds from the end of a message's data to its reply: checks, verdict and store.",
    ["listener"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=None,
)
VERDICTS = Counter(
    "postwarden_verdicts",
    "Inbound messages judged, by the action and reason of the verdict the reply follows.",
    ["action", "reason"],
    registry=None,
)
DELIVERIES = Counter(
    "postwarden_deliveries",
    "Outgoing recipients' delivery attempts, by result and the TLS policy of the host tried last.",
    ["result", "tls_policy"],
    registry=None,
)
JOB_RUNS = Counter(
    "postwarden_job_runs", "Periodic job runs ended, by job and outcome.", ["job", "outcome"], registry=None
)
JOB_SECONDS = Histogram(
    "postwarden_job_run_seconds",
    "Duration of periodic job runs.",
    ["job"],
    buckets=(0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0),
    registry=None,
)
REPORTS_SENT = Counter(
    "postwarden_reports_sent",
    "DMARC and TLS reports sent: queued as mail, or accepted by an HTTPS endpoint.",
    ["kind", "via"],
    registry=None,
)
IMAP_SESSIONS = Counter(
    "postwarden_imap_sessions", "IMAP sessions admitted, by listener kind.", ["listener"], registry=None
)


def _known(value: str, known: Iterable[str]) -> str:
    return value if value in known else OTHER


def _token(value: str | None) -> str:
    if value is None:
        return "none"
    return value if TOKEN.fullmatch(value) else OTHER


def _code(code: str) -> str:
    return code if REPLY_CODE.fullmatch(code) else OTHER


class _Children(Generic[M]):
    """A metric's children by the values a caller passes, each made once with its labels made safe
    by `clean`: a count costs one dict lookup, where labels() checks and locks at every call. The
    values passed come from our code (a listener kind, a reply's first three characters, a reason
    name), so the dict stays small."""

    def __init__(self, metric: M, clean: Callable[..., tuple[str, ...]]) -> None:
        self.metric, self.clean = metric, clean
        self.made: dict[tuple[str | None, ...], M] = {}

    def __call__(self, *values: str | None) -> M:
        child = self.made.get(values)
        if child is None:
            child = self.made[values] = self.metric.labels(*self.clean(*values))
        return child


_smtp_sessions = _Children(SMTP_SESSIONS, lambda listener: (_known(listener, LISTENERS),))
_smtp_replies = _Children(SMTP_REPLIES, lambda listener, code: (_known(listener, LISTENERS), _code(code)))
_smtp_transactions = _Children(
    SMTP_TRANSACTIONS, lambda listener, result: (_known(listener, LISTENERS), _token(result))
)
_smtp_data_seconds = _Children(SMTP_DATA_SECONDS, lambda listener: (_known(listener, LISTENERS),))
_verdicts = _Children(VERDICTS, lambda action, reason: (_token(action), _token(reason)))
_deliveries = _Children(DELIVERIES, lambda result, policy: (_known(result, DELIVERY_RESULTS), _token(policy)))
_job_runs = _Children(JOB_RUNS, lambda job, outcome: (job, outcome))  # registry names (app/jobs.py)
_job_seconds = _Children(JOB_SECONDS, lambda job: (job,))
_reports_sent = _Children(
    REPORTS_SENT, lambda kind, via: (_known(kind, REPORT_KINDS), _known(via, REPORT_WAYS))
)
_imap_sessions = _Children(IMAP_SESSIONS, lambda listener: (_known(listener, LISTENERS),))


def smtp_session(listener: str) -> None:
    _smtp_sessions(listener).inc()


def smtp_reply(listener: str, reply: str) -> None:
    """Count a reply by its code (the first line's three digits)."""
    _smtp_replies(listener, reply[:3]).inc()


def smtp_transaction(listener: str, result: str, seconds: float) -> None:
    _smtp_transactions(listener, result).inc()
    _smtp_data_seconds(listener).observe(seconds)


def verdict(action: str, reason: str | None) -> None:
    _verdicts(action, reason).inc()


def tls_policy_type(settings: TLSSettings | None) -> str:
    """The TLS policy a delivery attempt followed: DANE, MTA-STS (enforced or testing), a route's
    required TLS, or opportunistic; "none" when no host was tried."""
    if settings is None:
        return "none"
    if settings.verify_dane:
        return "dane"
    if settings.verify_pkix:
        return "mta-sts-testing" if settings.ignore_verification_errors else "mta-sts"
    return "required" if settings.starttls_required else "opportunistic"


def delivery(result: str, tls_policy: str) -> None:
    _deliveries(result, tls_policy).inc()


def job_run(job: str, failed: bool, seconds: float) -> None:
    _job_runs(job, "failed" if failed else "ok").inc()
    _job_seconds(job).observe(seconds)


def reports_sent(kind: str, via: str, count: int = 1) -> None:
    if count:
        _reports_sent(kind, via).inc(count)


def imap_session(listener: str) -> None:
    _imap_sessions(listener).inc()


# Multiprocess mode.


def enable_multiprocess(root: Path, service: str) -> Path:
    """Count in files under `root/service` from now on, in this process and the ones it forks; the
    files of the folder's last run are removed first. Call it once, at the start of the process that
    starts the service, before anything is counted. Returns the folder."""
    folder = root / service
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):  # only the counts' files: a misplaced metrics_dir loses nothing else
        stale.unlink(missing_ok=True)
    os.environ[MULTIPROC_VARIABLE] = str(folder)
    # prometheus-client picks its value class when it is imported; a metric's labelled children are
    # made at their first count and take the class in place then: the files, in each process's own.
    values.ValueClass = values.MultiProcessValue()
    return folder


def worker_folder(node: str) -> str:
    """The folder of a Celery worker: its node name, which is unique among the running workers."""
    return "worker-" + re.sub(r"[^A-Za-z0-9.-]", "_", node)[:100]


def process_ended(pid: int) -> None:
    """Tell the files that a forked process is gone (its counts stay: they were counted)."""
    folder = os.environ.get(MULTIPROC_VARIABLE)
    if folder is not None:
        mark_process_dead(pid, folder)


class MetricsFiles(Collector):
    """The sum, at each scrape, of every service's files under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def collect(self) -> Iterator[Metric]:
        try:
            return iter(MultiProcessCollector.merge(self._files()))
        except FileNotFoundError:  # a service removed its files between the listing and the read
            return iter(MultiProcessCollector.merge(self._files()))

    def _files(self) -> list[str]:
        return glob.glob(os.path.join(glob.escape(str(self.root)), "*", "*.db"))
