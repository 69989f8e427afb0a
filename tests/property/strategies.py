"""Hypothesis strategies shared by the property tests: hostile text, and record-shaped text.

Hostile text is weighted towards what breaks parsers and header builders: CR, LF, NUL, DEL, C1 and
Unicode line separators, lone surrogates (what aiosmtpd's surrogateescape decoding hands us for
non-UTF-8 octets), non-ASCII digits that `str.isdigit` accepts but `int` refuses, and the delimiters
of the syntaxes under test. `repeated` turns a short fragment into a long input, which is how
quadratic regular expressions and loops show up.
"""

from __future__ import annotations

from hypothesis import strategies as st

# Characters that have broken (or could break) the code under test.
TRICKY = (
    "\r\n\0\t\x0b\x0c\x1b\x7f\x85\x9b\xa0\u2028\u2029\ufeff\u202e"  # line ends and other controls
    "\udc80\udcff\ud800"  # lone surrogates
    "\u00b2\u00b9\u0663\uff11\u2155"  # digits (and a numeric) that int() rejects or reads oddly
    "\u212a\u0130\u00df\u00e9\u4e2d"  # case folding changes length or script
    ' ;:=,.@<>[]()"\\%{}!/?#+-_~*'  # delimiters of SMTP paths, tag lists, URIs, macros
)

tricky_chars = st.sampled_from(TRICKY)
printable_ascii = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
any_char = st.characters(exclude_categories=())  # every code point, surrogates included

hostile_text = st.one_of(
    st.text(alphabet=st.one_of(tricky_chars, printable_ascii), max_size=40),
    st.text(alphabet=any_char, max_size=40),
    st.text(alphabet=st.one_of(tricky_chars, any_char, printable_ascii), max_size=200),
)
# Numbers as a peer may write them: ASCII and other Unicode digits, and more digits than int() accepts
# (Python refuses to convert a string of over 4300 digits).
numberish = st.one_of(
    st.text(alphabet=st.sampled_from("0123456789\u00b2\u00b9\u0663\uff11"), min_size=1, max_size=6),
    st.integers(4300, 5000).map(lambda n: "9" * n),
)
# Hostile text without surrogates: what a UTF-8 decoder (DNS TXT, message headers) can produce.
decoded_text = hostile_text.map(lambda s: s.encode("utf-8", "replace").decode("utf-8"))
# Hostile octets: arbitrary bytes, and hostile text in UTF-8.
hostile_bytes = st.one_of(
    st.binary(max_size=300), decoded_text.map(lambda s: s.encode("utf-8", "surrogateescape"))
)


def repeated(fragments: st.SearchStrategy[str], size: int) -> st.SearchStrategy[str]:
    """A fragment repeated to about `size` characters, between a short prefix and suffix (the shape of
    input that makes a backtracking pattern or a quadratic loop run long: "k:a", spaces, "b")."""
    body = fragments.filter(bool).map(lambda s: (s * (size // len(s) + 1))[:size])
    short = st.text(alphabet=st.one_of(tricky_chars, printable_ascii), max_size=4)
    return st.builds(lambda prefix, middle, suffix: prefix + middle + suffix, short, body, short)


def joined(
    parts: st.SearchStrategy[str], separators: st.SearchStrategy[str], max_parts: int = 12
) -> st.SearchStrategy[str]:
    """One to `max_parts` parts with a separator drawn for each gap."""
    gaps = st.lists(st.tuples(separators, parts), max_size=max_parts - 1)
    return st.builds(lambda first, rest: first + "".join(s + p for s, p in rest), parts, gaps)


# Domain names: valid ones, and hostile text in their place.
label = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
top_label = st.from_regex(r"[a-z]{2,6}", fullmatch=True)
domain = st.builds(
    lambda labels, top: ".".join([*labels, top]), st.lists(label, min_size=1, max_size=3), top_label
)
domain_or_junk = st.one_of(domain, hostile_text)
localpart = st.from_regex(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,12}(?:\.[A-Za-z0-9_-]{1,8}){0,2}", fullmatch=True
)
address = st.builds(lambda local, dom: f"{local}@{dom}", localpart, domain)
ip_address = st.one_of(st.ip_addresses().map(str), hostile_text)
