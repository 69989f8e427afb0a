"""The TLS requirements of one delivery attempt to one MX host, from MTA-STS and DANE (SPEC R4.2-R4.6).

`decide_tls` is a pure function over the lookups the caller has made:

    sts = await mtasts.policy_for_domain(domain, resolver, db_url, mtasts_settings)  # once per domain
    mx = await resolver.mx(domain)  # (or the implicit MX, with the authenticity of that lookup)
    for host in mx hosts, in preference order:
        dane = await dane.dane_for_mx(resolver, host, mx.authentic, port)  # DNSTemporaryError: skip host
        decision = decide_tls(domain, host, mx.authentic, sts, dane, tls_required_no)
        if not decision.use_host: record the pre-connection failures, try the next host
        else: connect with decision.settings, record the outcome under both policies

Rules (RFC 8461, RFC 7672, RFC 8689):
- Usable DANE TLSA records (MX and TLSA DNSSEC-authenticated) win over MTA-STS for that host (R4.4,
  RFC 8461 §2): TLS is mandatory and the certificate is checked against TLSA, not PKIX; the host is
  used even if an MTA-STS policy does not list it (its name is DNSSEC-authenticated).
- Authenticated TLSA records that are all unusable: TLS mandatory, DANE gives no authentication,
  MTA-STS (if any) still applies (RFC 7672 §2.2).
- A TLSA lookup that failed in a signed zone: the host is not used now (`dnssec-invalid`).
- MTA-STS `enforce`: only MX hosts matching the policy are used; TLS mandatory with PKIX
  verification of the MX host name. `testing`: the same checks, failures recorded, mail delivered.
  `none`, no policy, or a failed discovery: opportunistic TLS without verification (fail open).
- `TLS-Required: No` (RFC 8689): every host is used, STARTTLS is opportunistic and verification
  failures are recorded but ignored.

Recording (R4.6, R4.7): every decision names two RFC 8460 policies, one for the recipient domain
(sts / no-policy-found, `mx-host` the policy's pattern the host matched) and one for the MX host
(tlsa with the TLSA base domain as policy domain, or no-policy-found; `mx-host` the host), so each
MX host has policy entries of its own. For each of them: if the decision carries a failure for it
(`domain_failure`, `host_failure`), record that failure for this attempt and nothing else;
otherwise record the session's outcome. A failed certificate check is the failure of the policy
that asked for it (`failure_owner`: DANE's tlsa, or MTA-STS's sts), and for the other policy the
session negotiated TLS: a success (so a DANE failure is never also the sts policy's, and a session
under no policy that completed TLS is a success of no-policy-found). A session without TLS (no
STARTTLS, a failed handshake) is a failure of both. When `use_host` is False, no connection is
made: record the failures, treat the host as a temporary failure of this attempt.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from app.models.tlsrpt import PolicyType
from app.queue.dane import (
    CERTIFICATE_EXPIRED,
    CERTIFICATE_HOST_MISMATCH,
    DNSSEC_INVALID,
    TLSA_INVALID,
    VALIDATION_FAILURE,
    DANELookup,
    DANEStatus,
    TLSARecord,
)
from app.queue.mtasts import Mode, MTASTSResult, Policy, host_matches_pattern

STARTTLS_NOT_SUPPORTED = "starttls-not-supported"
CERTIFICATE_NOT_TRUSTED = "certificate-not-trusted"
# Results of checking the certificate a completed handshake presented (RFC 8460 §4.3.1, §4.3.2).
CERTIFICATE_CHECKS = frozenset(
    {CERTIFICATE_HOST_MISMATCH, CERTIFICATE_EXPIRED, CERTIFICATE_NOT_TRUSTED, TLSA_INVALID}
)

POLICY_STS: PolicyType = "sts"
POLICY_TLSA: PolicyType = "tlsa"
NO_POLICY_FOUND: PolicyType = "no-policy-found"


@dataclass(frozen=True)
class TLSSettings:
    """Independent TLS settings of one attempt (R4.2), for the SMTP client.

    - `starttls_required`: without STARTTLS, or when the TLS handshake (or the first read after
      it, R4.5) fails, the attempt fails; when False the client may go on, or retry, in plain text.
    - `verify_pkix`: check the chain against the CA bundle and `server_name` (MTA-STS).
    - `verify_dane`: check the chain with `dane.verify_chain(chain, tlsa_records, dane_hostnames)`;
      PKIX is then not checked (`verify_pkix` is False).
    - `ignore_verification_errors`: a failed verification is recorded (with its result type) but
      the session continues and the mail is delivered (MTA-STS testing, `TLS-Required: No`).
    - `server_name`: the SNI to send and the PKIX reference identifier: the MX host name, or for
      DANE the TLSA base domain (RFC 7672 §8.1).
    - `starttls_missing_result`: the RFC 8460 result type to record when the server offers no
      STARTTLS: `starttls-not-supported`, for a DANE host too (RFC 8460 §4.3.1); `dane-required`
      means DANE required by configuration without validated TLSA records, which has no setting.
    """

    starttls_required: bool
    verify_pkix: bool
    verify_dane: bool
    ignore_verification_errors: bool
    server_name: str
    tlsa_records: tuple[TLSARecord, ...] = ()
    dane_hostnames: tuple[str, ...] = ()
    starttls_missing_result: str = STARTTLS_NOT_SUPPORTED


@dataclass(frozen=True)
class ReportPolicy:
    """An RFC 8460 §4.4 `policy` object: the policy a TLS result is counted under.

    `policy_type` is `sts`, `tlsa` or `no-policy-found`. For the recipient domain: policy_domain is
    the domain, policy_string the MTA-STS policy lines, mx_host the policy's pattern that the MX host
    matched (the host itself when none did). For the MX host: policy_domain is the TLSA base domain
    (RFC 8460 §1.3: the host after secure CNAME expansion; the host name under no-policy-found),
    policy_string its TLSA records in presentation form, mx_host the host name. `mx-host` is one
    string in a report: mx_host holds at most one.
    """

    policy_type: PolicyType
    policy_domain: str
    policy_string: tuple[str, ...] = ()
    mx_host: tuple[str, ...] = ()


@dataclass(frozen=True)
class TLSFailure:
    """A TLS or policy failure in RFC 8460 terms: result type and failure reason (known before
    connecting, or met in the session)."""

    result_type: str
    reason: str


@dataclass(frozen=True)
class TLSDecision:
    """What to do for one MX host (see the module docstring for how to record the results).

    `use_host` False: do not connect to this host in this attempt (MTA-STS enforce and the host does
    not match the policy, or its TLSA lookup failed in a signed zone); `domain_failure` or
    `host_failure` says why. `basis` names the rule that decided, for logs.
    """

    use_host: bool
    settings: TLSSettings
    domain_policy: ReportPolicy
    host_policy: ReportPolicy
    domain_failure: TLSFailure | None
    host_failure: TLSFailure | None
    basis: str

    def failure_owner(self, failure: TLSFailure) -> Literal["domain", "host"] | None:
        """The one policy a session's failure belongs to; None: to both.

        A failed certificate check belongs to the policy that checked: DANE's tlsa (RFC 7672), or
        PKIX for MTA-STS. Anything else left the session without TLS, under either policy.
        """
        if failure.result_type not in CERTIFICATE_CHECKS:
            return None
        if self.settings.verify_dane:
            return "host"
        return "domain" if self.settings.verify_pkix else None


def decide_tls(
    recipient_domain: str,
    mx_host: str,
    mx_authentic: bool,
    sts: MTASTSResult | None,
    dane: DANELookup | None,
    tls_required_no: bool = False,
) -> TLSDecision:
    """Combine the recipient domain's MTA-STS result and the MX host's DANE lookup (either may be
    None when it was not looked up) into the decision for one attempt to `mx_host`."""
    domain = recipient_domain.lower().rstrip(".")
    host = mx_host.lower().rstrip(".")
    # DANE counts only when the MX RRset itself was authenticated (SPEC R4.4).
    dane = dane if mx_authentic else None
    domain_policy, domain_failure = _domain_policy(domain, host, sts)
    host_policy, host_failure = _host_policy(host, dane)
    policy = _active_policy(sts)
    mx_mismatch = policy is not None and not policy.allows_mx(host)
    if policy is not None and mx_mismatch and (dane is None or dane.status != DANEStatus.DANE):
        reason = f"MX host {host} does not match the MTA-STS policy of {domain} ({', '.join(policy.mx)})"
        domain_failure = domain_failure or TLSFailure(VALIDATION_FAILURE, reason)
    settings, use_host, basis = _settings(host, policy, mx_mismatch, dane)
    if tls_required_no:
        settings = replace(settings, starttls_required=False, ignore_verification_errors=True)
        use_host, basis = True, f"{basis}; TLS-Required: No"
    return TLSDecision(use_host, settings, domain_policy, host_policy, domain_failure, host_failure, basis)


def _active_policy(sts: MTASTSResult | None) -> Policy | None:
    """The MTA-STS policy in force; a `none` policy is as if there were none (RFC 8461 §5)."""
    if sts is None or sts.policy is None or sts.policy.mode == Mode.NONE:
        return None
    return sts.policy


def _domain_policy(
    domain: str, host: str, sts: MTASTSResult | None
) -> tuple[ReportPolicy, TLSFailure | None]:
    policy = _active_policy(sts)
    if policy is not None:
        matched = next((pattern for pattern in policy.mx if host_matches_pattern(host, pattern)), host)
        return ReportPolicy(POLICY_STS, domain, policy.lines(), (matched,)), None
    if sts is not None and sts.failure is not None:
        # The domain publishes MTA-STS but we could not get its policy: reported under sts.
        return ReportPolicy(POLICY_STS, domain), TLSFailure(sts.failure, sts.error or sts.failure)
    return ReportPolicy(NO_POLICY_FOUND, domain), None


def _host_policy(host: str, dane: DANELookup | None) -> tuple[ReportPolicy, TLSFailure | None]:
    if dane is None or dane.status == DANEStatus.NONE:
        return ReportPolicy(NO_POLICY_FOUND, host, mx_host=(host,)), None
    policy = ReportPolicy(POLICY_TLSA, dane.base_domain, dane.policy_strings, (host,))
    if dane.status == DANEStatus.DNSSEC_INVALID:
        return policy, TLSFailure(DNSSEC_INVALID, dane.detail or "TLSA lookup failed")
    return policy, None


def _settings(
    host: str, policy: Policy | None, mx_mismatch: bool, dane: DANELookup | None
) -> tuple[TLSSettings, bool, str]:
    """Settings, whether to use the host, and the deciding rule."""
    status = dane.status if dane is not None else DANEStatus.NONE
    if dane is not None and status == DANEStatus.DANE:
        settings = TLSSettings(
            starttls_required=True,
            verify_pkix=False,
            verify_dane=True,
            ignore_verification_errors=False,
            server_name=dane.base_domain,
            tlsa_records=dane.usable_records,
            dane_hostnames=dane.hostnames,
        )
        return settings, True, "DANE"
    if status == DANEStatus.DNSSEC_INVALID:
        # Not used now; the settings are MTA-STS's, for `TLS-Required: No`, which uses it anyway.
        settings, _, basis = _settings(host, policy, mx_mismatch, None)
        return settings, False, f"DANE: TLSA lookup failed in a signed zone; {basis}"
    dane_mandates_tls = status == DANEStatus.UNUSABLE
    prefix = "DANE TLSA unusable, TLS mandatory; " if dane_mandates_tls else ""
    if policy is None:
        return _opportunistic(host, dane_mandates_tls), True, f"{prefix}no MTA-STS policy"
    enforce = policy.mode == Mode.ENFORCE
    settings = TLSSettings(
        starttls_required=enforce or dane_mandates_tls,
        verify_pkix=True,
        verify_dane=False,
        ignore_verification_errors=not enforce,
        server_name=host,
    )
    if enforce and mx_mismatch:
        return settings, False, f"{prefix}MTA-STS enforce: MX host not in the policy"
    return settings, True, f"{prefix}MTA-STS {policy.mode}"


def _opportunistic(host: str, tls_mandatory: bool = False) -> TLSSettings:
    return TLSSettings(
        starttls_required=tls_mandatory,
        verify_pkix=False,
        verify_dane=False,
        ignore_verification_errors=False,
        server_name=host,
    )
