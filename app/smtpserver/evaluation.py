"""Handing on the DMARC evaluation of an inbound message (SPEC R2.1), after its reply is decided.

Whether an evaluation applies and what it holds is app/dmarcreports/evaluation.py's; this step decides
what only the SMTP process knows (is it *optional*?) and gives it to the hand-off (handoff.py), which
sends it to the task that stores it. Best effort: the message is stored whatever happens here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from app.address import address_key
from app.auth.types import Disposition
from app.config import Config
from app.dmarcreports.evaluation import Evaluation, evaluation_applies, evaluation_for
from app.store.files import MessageStore
from app.verdict.analysis import Analysis
from app.verdict.dmarc import REASON as DMARC_REASON
from app.verdict.reports import reporting_addresses
from app.verdict.types import Action, Arrival

log = logging.getLogger("app.smtpserver")

RecordEvaluation = Callable[[Evaluation], None]
# The disposition an evaluation reports is what we did with the message. A reject a ruleset accepted
# into a mailbox (SPEC R3.5) is an accept here too: its analysis says "accept".
APPLIED_DISPOSITION: dict[Action, Disposition] = {
    "accept": "none",
    "quarantine": "quarantine",
    "reject": "reject",
}


def applied_disposition(analysis: Analysis) -> Disposition | None:
    """What an evaluation reports we did; None for a reject that was not DMARC's (a junk reject by
    reputation): R2.1 stores evaluations of accepted messages and of DMARC rejects only."""
    if analysis.action == "reject" and analysis.verdict.reason != DMARC_REASON:
        return None
    return APPLIED_DISPOSITION[analysis.action]


class EvaluationHandOn:
    """The inbound handler's last step before the reply: the evaluation, if R2.1 asks for one."""

    def __init__(self, config: Config, store: MessageStore, record: RecordEvaluation) -> None:
        self.store = store
        self.record = record
        self.reporting_addresses = reporting_addresses(config)

    async def __call__(self, arrival: Arrival, analysis: Analysis) -> None:
        outcome, disposition = arrival.outcome, applied_disposition(analysis)
        if disposition is None or not evaluation_applies(outcome):
            return
        recipients = [r.address for r in arrival.recipients]
        evaluation = evaluation_for(
            outcome,
            remote_ip=arrival.remote_ip,
            mail_from=arrival.mail_from,
            recipients=recipients,
            disposition=disposition,
            optional=await self._optional(arrival, analysis, recipients),
        )
        if analysis.verdict.dmarc_override:  # a ruleset let through what the policy asked to stop
            evaluation = replace(evaluation, override_reasons=(analysis.verdict.dmarc_override,))
        try:
            self.record(evaluation)
        except Exception:  # reports are best effort; the message is stored and must get its reply
            log.exception("could not hand on the DMARC evaluation for %s", outcome.dmarc.policy_domain)

    async def _optional(self, arrival: Arrival, analysis: Analysis, recipients: list[str]) -> bool:
        if any(address_key(r) in self.reporting_addresses for r in recipients):
            return True  # two servers must not trade reports about reports forever
        # A reject is reported only for domains we accepted mail from, so nobody can make us send a
        # stream of reports to a third party by forging its domain.
        return analysis.action == "reject" and not await self.store.has_accepted_mail_from(
            arrival.outcome.from_domain
        )
