"""Properties of the MTA-STS parsers: the policy file a recipient domain serves over HTTPS
(app/queue/mtasts.py) and its `_mta-sts` TXT record (app/queue/mtastsfetch.py), on any text."""

from __future__ import annotations

import re

from hypothesis import example, given, settings
from hypothesis import strategies as st

from app.queue.mtasts import MAX_AGE_LIMIT, Mode, Policy, parse_policy
from app.queue.mtastsfetch import parse_record
from tests.property.bounds import LARGE, LARGE_INPUT_SECONDS, finishes_within
from tests.property.strategies import decoded_text, domain, joined, numberish, repeated

KEYS = ("version", "mode", "max_age", "mx", "x-ext", "Mode", " mx")
VALUES = ("STSv1", "enforce", "testing", "none", "86400", "*.example.com", "mx.example.com", "*.", "")
policy_line = st.one_of(
    st.builds(
        "{}{}{}".format,
        st.one_of(st.sampled_from(KEYS), decoded_text),
        st.sampled_from((":", ": ", ":\t", " : ")),
        st.one_of(st.sampled_from(VALUES), numberish, domain, decoded_text),
    ),
    decoded_text,
)
policy_text = st.one_of(decoded_text, joined(policy_line, st.sampled_from(("\n", "\r\n", "\r", "\n\n"))))
MX_PATTERN = re.compile(r"(\*\.)?[a-z0-9-]+(\.[a-z0-9-]+)*")


def check_policy(policy: Policy) -> None:
    assert policy.mode in set(Mode)
    assert 0 <= policy.max_age <= MAX_AGE_LIMIT
    assert all(MX_PATTERN.fullmatch(pattern) for pattern in policy.mx), policy.mx
    assert policy.mx or policy.mode == Mode.NONE


@given(policy_text)
def test_policy_parse_raises_only_value_error(text: str) -> None:
    try:
        policy = parse_policy(text)
    except ValueError:
        return
    check_policy(policy)


mx_pattern = st.builds("{}{}".format, st.sampled_from(("", "*.")), domain)
policies = st.builds(
    Policy,
    st.sampled_from(list(Mode)),
    st.integers(0, MAX_AGE_LIMIT),
    st.lists(mx_pattern, min_size=1, max_size=5).map(tuple),
)


@given(policies, st.sampled_from(("\n", "\r\n")), st.randoms())
def test_policy_lines_are_read_back(policy: Policy, line_end: str, random: object) -> None:
    """A policy written out (RFC 8460 policy-string lines, in any order) parses to the same policy, its
    mx patterns in the order written."""
    lines = list(policy.lines())
    random.shuffle(lines)  # type: ignore[attr-defined]
    parsed = parse_policy(line_end.join(lines))
    assert (parsed.mode, parsed.max_age) == (policy.mode, policy.max_age)
    assert parsed.mx == tuple(line.removeprefix("mx: ") for line in lines if line.startswith("mx: "))


@settings(max_examples=max(10, settings().max_examples // 4))  # large inputs: fewer
@given(repeated(st.one_of(policy_line.map(lambda line: line + "\n"), st.sampled_from(" \t:*.")), LARGE))
@example("k:a" + " " * LARGE + "b")
def test_large_policies_parse_quickly(text: str) -> None:
    with finishes_within(LARGE_INPUT_SECONDS):
        try:
            check_policy(parse_policy(text))
        except ValueError:
            return


record_field = st.one_of(
    st.builds("id={}".format, st.one_of(st.from_regex(r"[A-Za-z0-9]{1,32}", fullmatch=True), decoded_text)),
    st.builds("{}={}".format, st.one_of(st.sampled_from(("x", "v", "id ")), decoded_text), decoded_text),
    decoded_text,
)
record_text = st.one_of(
    decoded_text,
    joined(record_field, st.sampled_from((";", "; ", " ;"))).map("v=STSv1;{}".format),
)


@given(record_text)
def test_record_parse_raises_only_value_error(text: str) -> None:
    try:
        record_id = parse_record(text)
    except ValueError:
        return
    assert re.fullmatch(r"[A-Za-z0-9]{1,32}", record_id)


@settings(max_examples=max(10, settings().max_examples // 4))  # large inputs: fewer
@given(repeated(record_field.map(lambda f: f + ";"), LARGE))
def test_large_records_parse_quickly(rest: str) -> None:
    with finishes_within(LARGE_INPUT_SECONDS):
        try:
            parse_record("v=STSv1;" + rest)
        except ValueError:
            return
