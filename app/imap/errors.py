"""The failure a command handler raises: the session answers it with a tagged NO or BAD."""

from __future__ import annotations


class CommandFailed(Exception):
    """Answer the command with `status` (NO or BAD) and `text`, ours."""

    def __init__(self, status: str, text: str) -> None:
        super().__init__(text)
        self.status, self.text = status, text
