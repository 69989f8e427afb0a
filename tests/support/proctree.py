"""A process and its descendants from /proc (Linux): who they are and the CPU they used, for the
benchmarks that compare servers made of several processes."""

from __future__ import annotations

import os
from pathlib import Path


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (which may hold spaces and parentheses)."""
    return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()


def _all_stats() -> dict[int, list[str]]:
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stats[int(entry.name)] = _stat_fields(int(entry.name))
            except OSError:
                continue  # exited meanwhile
    return stats


def _tree(root: int, stats: dict[int, list[str]]) -> set[int]:
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, fields in stats.items() if int(fields[1]) in tree} - tree
        tree |= more
        grew = bool(more)
    return tree


def process_tree(root: int) -> set[int]:
    """`root` and its descendants now."""
    return _tree(root, _all_stats())


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU of a process and its descendants, the exited ones its tree has reaped
    included (Postfix's smtpd and cleanup processes come and go)."""
    stats = _all_stats()
    ticks = sum(
        sum(int(stats[pid][i]) for i in (11, 12, 13, 14)) for pid in _tree(root, stats) if pid in stats
    )
    return ticks / os.sysconf("SC_CLK_TCK")


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it counts as gone)."""
    try:
        return _stat_fields(pid)[0] != "Z"
    except OSError:
        return False
