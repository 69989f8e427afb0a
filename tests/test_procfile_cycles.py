"""`make run`'s worker, beat and flower under real honcho, started and stopped several times: the
filesystem broker's folder stays bounded (no event queue left bound by a dead flower) and the worker
exits within honcho's grace period (honcho SIGKILLs what is left 5 s after its SIGTERM)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.celeryworker import wait_for_text
from tests.support.configs import write_config
from tests.support.webclient import free_port

ROOT = Path(__file__).resolve().parent.parent
HONCHO = str(Path(sys.executable).with_name("honcho"))
CYCLES = 3


def procfile(directory: Path, flower_port: int) -> Path:
    """The project's Procfile lines for worker, beat and flower; flower on a free loopback port."""
    lines = [
        line
        for line in (ROOT / "Procfile").read_text().splitlines()
        if line.split(":", 1)[0] in ("worker", "beat", "flower")
    ]
    assert len(lines) == 3
    text = "\n".join(lines).replace("--port=5555", f"--port={flower_port}")
    path = directory / "Procfile"
    path.write_text(text + "\n")
    return path


def event_bindings(queue: Path) -> list[str]:
    table = queue / "control" / "celeryev.exchange"
    if not table.exists():
        return []
    return [binding[2] for binding in json.loads(table.read_text() or "[]")]


def wait_for(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not within {timeout}s"
        time.sleep(0.1)


def stop_leftovers(log: Path) -> None:
    """If a cycle failed half-way, stop what honcho started (each in its own session) by pid."""
    for pid in re.findall(r"started \(pid=(\d+)\)", log.read_text(errors="replace")):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(pid), signal.SIGKILL)


def one_cycle(procfile_path: Path, env: dict[str, str], log: Path, queue: Path) -> str:
    with log.open("wb") as out:
        honcho = subprocess.Popen(
            [HONCHO, "-f", str(procfile_path), "-d", str(ROOT), "start"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_text(log, "ready.", timeout=40, process=honcho)
        wait_for(lambda: len(event_bindings(queue)) >= 1, 40, "flower's event queue")
        # Flower has reached the worker (it turns task events on): events flow to every bound queue.
        wait_for_text(log, "enabled by remote", timeout=30, process=honcho)
        wait_for_text(log, "beat: Starting", timeout=30, process=honcho)
        honcho.send_signal(signal.SIGTERM)
        honcho.wait(timeout=30)
    finally:
        if honcho.poll() is None:  # only then can its children still be running
            honcho.kill()
            honcho.wait()
            stop_leftovers(log)
    return log.read_text(errors="replace")


def test_restarts_leave_the_broker_bounded_and_the_worker_exits_in_time(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    queue = tmp_path / "data" / "queue"
    env = {
        **os.environ,
        "POSTWARDEN_CONFIG": str(config),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    path = procfile(tmp_path, free_port())
    for cycle in range(CYCLES):
        output = one_cycle(path, env, tmp_path / f"honcho-{cycle}.log", queue)
        assert "SIGKILL" not in output, output[-3000:]
        assert re.search(r"worker\.1 stopped \(rc=", output), output[-3000:]
    # Only the last flower's queue may still be bound; the earlier ones were pruned with their files.
    assert len(event_bindings(queue)) <= 1
    files = [entry.name for entry in queue.iterdir() if entry.is_file()]
    event_files = [name for name in files if ".celeryev." in name]
    assert len(event_files) <= 20, f"{len(event_files)} event files left: {sorted(files)[:10]}"
