"""The one error of incoming report parsing, with the R6.3 reason the message header will carry.

Both texts are fixed strings chosen here: nothing from the report is echoed, so a reason is safe to put
in a header, a log line or a page.
"""

from __future__ import annotations

from typing import Literal

Kind = Literal["dmarc", "tls"]

DMARC_UNPARSABLE = "could not parse report"
POLICY_DOMAIN_UNPARSABLE = "could not parse domain in published policy"
TLS_UNPARSABLE = "could not parse TLS report"


def reason_for(kind: Kind) -> str:
    return TLS_UNPARSABLE if kind == "tls" else DMARC_UNPARSABLE


class ReportError(Exception):
    """A report refused: `reason` is the R6.3 text, `detail` says which check refused it (for the CLI)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
