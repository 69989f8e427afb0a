"""Properties of the DMARC record parser (app/auth/dmarc.py parse_record) on any TXT text."""

from __future__ import annotations

import re

from hypothesis import example, given, settings
from hypothesis import strategies as st

from app.auth.dmarc import DMARCRecordError, parse_record
from app.auth.types import DMARCRecord
from tests.property.bounds import LARGE, LARGE_INPUT_SECONDS, finishes_within
from tests.property.strategies import decoded_text, hostile_text, joined, numberish, repeated

TAGS = ("v", "p", "sp", "np", "adkim", "aspf", "t", "psd", "rua", "ruf", "fo", "ri", "pct", "rf")
VALUES = (
    "none",
    "quarantine",
    "reject",
    "r",
    "s",
    "y",
    "n",
    "u",
    "0",
    "1",
    "100",
    "101",
    "d:s",
    "mailto:a@b.example",
)
WHITESPACE = st.sampled_from(("", " ", "\t", "  "))

tag = st.one_of(st.sampled_from(TAGS), decoded_text)
tag_value = st.one_of(st.sampled_from(VALUES), numberish, decoded_text)
tag_spec = st.builds(lambda name, ws, value: f"{name}{ws}={ws}{value}", tag, WHITESPACE, tag_value)
# Text that starts like a record (so parsing goes past the version check), and any text at all.
after_version = joined(st.one_of(tag_spec, decoded_text), st.sampled_from((";", "; ", " ;", ";;")))
record_text = st.one_of(decoded_text, after_version.map(lambda rest: "v=DMARC1;" + rest))

URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[\x21-\x7e]+")


def check_record(record: DMARCRecord) -> None:
    """Every field of a parsed record holds one of the values its type allows."""
    assert {record.p, record.sp, record.np} <= {None, "none", "quarantine", "reject"}
    assert record.adkim in ("r", "s") and record.aspf in ("r", "s")
    assert record.psd in ("y", "n", "u")
    assert re.fullmatch(r"[01ds](:[01ds])*", record.fo)
    assert record.pct is None or 0 <= record.pct <= 100
    assert record.ri is None or 0 <= record.ri < 2**32
    # URIs end up in report mail (RCPT TO, headers) and HTTP requests: printable ASCII only.
    assert all(URI.fullmatch(uri) for uri in record.rua + record.ruf)


@given(record_text)
@example("v=DMARC1; p=none; pct=\u00b2")  # str.isdigit() is true, int() raised ValueError
@example("v=DMARC1; ri=" + "9" * 4301)  # over int()'s digit limit
@example("v=DMARC1; p=none; rua=mailto:a\0b@example.com")  # a control in a report URI
def test_parse_raises_only_its_own_error(text: str) -> None:
    try:
        record = parse_record(text)
    except DMARCRecordError:
        return
    check_record(record)


@given(after_version)
def test_text_starting_with_the_version_is_always_a_record(rest: str) -> None:
    """RFC 9989 4.7: unknown tags and unusable values are ignored, never an error."""
    check_record(parse_record("v=DMARC1;" + rest))


@given(st.text(max_size=60).filter(lambda s: not re.match(r"\s*v\s*=\s*DMARC1\s*(;|$)", s)))
def test_text_not_starting_with_the_version_is_refused(text: str) -> None:
    try:
        parse_record(text)
    except DMARCRecordError:
        return
    raise AssertionError(f"{text!r} parsed as a DMARC record")


KEYWORD_TAGS = ("p", "sp", "adkim", "aspf")
valid_tags = st.fixed_dictionaries(
    {},
    optional={
        "p": st.sampled_from(("none", "quarantine", "reject")),
        "sp": st.sampled_from(("none", "quarantine", "reject")),
        "adkim": st.sampled_from(("r", "s")),
        "aspf": st.sampled_from(("r", "s")),
        "pct": st.integers(1, 100).map(str),
        "ri": st.integers(0, 2**32 - 1).map(str),
        "fo": st.lists(st.sampled_from("01ds"), min_size=1, max_size=4).map(":".join),
    },
)


@given(valid_tags, WHITESPACE, st.booleans(), st.randoms())
def test_valid_tags_are_read_back(tags: dict[str, str], space: str, upper: bool, random: object) -> None:
    """A record made of valid tags, in any order, spacing and keyword case, parses to exactly those values."""
    items = list(tags.items())
    random.shuffle(items)  # type: ignore[attr-defined]
    rendered = [(name, value.upper() if upper and name in KEYWORD_TAGS else value) for name, value in items]
    text = f"v=DMARC1{space};" + ";".join(f"{space}{name}={value}" for name, value in rendered)
    record = parse_record(text)
    assert record.invalid_tags == ()
    for name, value in tags.items():
        parsed = getattr(record, name)
        assert str(parsed) == value, (name, parsed, value)


@settings(max_examples=max(10, settings().max_examples // 4))  # large inputs: fewer
@given(repeated(st.one_of(hostile_text, tag_spec.map(lambda t: t + ";")), LARGE))
def test_large_records_parse_quickly(rest: str) -> None:
    with finishes_within(LARGE_INPUT_SECONDS):
        check_record(parse_record("v=DMARC1;" + rest))
