"""The beat schedule, in one place."""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab


def beat_schedule() -> dict[str, dict[str, Any]]:
    return {
        "sweep-queue": {"task": "tasks.mail.sweep_queue", "schedule": 60.0},
        # SPEC R4.3: cached policies are re-fetched about daily (the refresh skips fresh ones).
        "refresh-mtasts-policies": {
            "task": "tasks.delivery.refresh_mtasts_policies",
            "schedule": crontab(minute=17),
        },
        "remove-orphan-queue-files": {
            "task": "tasks.delivery.remove_orphan_files",
            "schedule": crontab(minute=47),
        },
        # SPEC R2.3: every whole hour; the task starts the run 30 to 90 s later.
        "dmarc-reports": {"task": "tasks.reports.schedule_dmarc_reports", "schedule": crontab(minute=0)},
        # SPEC R5.2: daily, 4 to 6 minutes after 00:00 UTC (the app's timezone is UTC).
        "tls-reports": {"task": "tasks.tlsreports.send_tls_reports", "schedule": crontab(minute=5, hour=0)},
        "tls-report-posts": {"task": "tasks.tlsreports.post_tls_reports", "schedule": 60.0},
    }
