"""The beat schedule, in one place."""

from __future__ import annotations

from typing import Any


def beat_schedule() -> dict[str, dict[str, Any]]:
    return {
        "sweep-queue": {"task": "tasks.mail.sweep_queue", "schedule": 60.0},
    }
