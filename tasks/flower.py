"""`python -m tasks.flower ARGS`: `celery -A tasks flower ARGS`, after pruning the event queues that
earlier flowers left bound on the filesystem broker (see tasks/eventqueues.py)."""

from __future__ import annotations

import sys

from celery.bin.celery import main as celery_main

from tasks.celery_app import prune_broker_queues


def main() -> int:
    prune_broker_queues(min_age=0.0)
    sys.argv = ["celery", "-A", "tasks", "flower", *sys.argv[1:]]
    return celery_main()


if __name__ == "__main__":
    sys.exit(main())
