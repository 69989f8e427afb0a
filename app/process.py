"""Process lifetime helpers shared by the SMTP supervisor's children."""

from __future__ import annotations

import ctypes
import logging
import os
import signal

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Seconds after SIGTERM at which a Celery worker ends itself (tasks/celery_app.py); the Procfile and
# the systemd units (app/systemdunits.py) set it to fit their stop timeouts.
WORKER_STOP_GRACE_VARIABLE = "POSTWARDEN_WORKER_STOP_GRACE"


def die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process when `parent` dies (a SIGKILLed supervisor cannot stop
    its children itself); exit now if it is already gone."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: children then outlive a killed supervisor
        log.warning("cannot tie child processes to the supervisor's life on this system")
    if os.getppid() != parent:  # it died before the prctl took effect
        os._exit(1)
