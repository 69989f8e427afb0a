"""The repository's own docs: every behaviour the code cites has a section, and the links resolve.

A fresh clone must need nothing outside the repository: the code cites behaviours as `SPEC R2.1` or
`R4.4` (ranges as `R4.2-R4.6` or `R5.1 to R5.4`), and docs/behaviour.md has a heading for each.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
CODE_DIRS = (ROOT / "app", ROOT / "tasks")

# A reference is R<section>.<item> not inside a longer word or number; a range names both ends.
REFERENCE = re.compile(r"(?<![\w.])R(\d+)\.(\d+)(?!\.?\d)")
RANGE = re.compile(r"(?<![\w.])R(\d+)\.(\d+)\s*(?:-|\u2013|to)\s*R\1\.(\d+)(?!\.?\d)")
HEADING = re.compile(r"^#{2,6}\s+(R\d+\.\d+)\b", re.MULTILINE)
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")


def references(text: str) -> set[str]:
    """Every behaviour `text` cites, each item of a range included."""
    found = {f"R{section}.{item}" for section, item in REFERENCE.findall(text)}
    for section, first, last in RANGE.findall(text):
        found |= {f"R{section}.{item}" for item in range(int(first), int(last) + 1)}
    return found


def code_references() -> dict[str, list[str]]:
    """Behaviour → the files (relative to the repository) that cite it."""
    cited: dict[str, list[str]] = {}
    for directory in CODE_DIRS:
        for path in sorted(directory.rglob("*.py")):
            for reference in references(path.read_text(encoding="utf-8")):
                cited.setdefault(reference, []).append(str(path.relative_to(ROOT)))
    return cited


def headings() -> list[str]:
    return HEADING.findall((DOCS / "behaviour.md").read_text(encoding="utf-8"))


def test_reference_parsing_expands_ranges_and_ignores_other_numbers() -> None:
    text = "SPEC R4.2-R4.6; R5.1 to R5.4, (R2.7). RFC 8460 §4.3, version R10.2.1, BAR1.2, R3.4 b"
    assert references(text) == {f"R4.{i}" for i in range(2, 7)} | {f"R5.{i}" for i in range(1, 5)} | {
        "R2.7",
        "R3.4",
    }


def test_every_behaviour_cited_in_the_code_has_a_section() -> None:
    cited = code_references()
    assert len(cited) >= 20, f"the reference scan found too little: {sorted(cited)}"
    documented = set(headings())
    missing = {ref: files for ref, files in cited.items() if ref not in documented}
    assert not missing, f"docs/behaviour.md has no heading for: {missing}"


def test_behaviour_sections_are_unique_and_in_order() -> None:
    found = headings()
    assert len(found) == len(set(found)), "a behaviour has two headings"
    numbers = [tuple(int(part) for part in ref[1:].split(".")) for ref in found]
    assert numbers == sorted(numbers)


def test_readme_links_the_docs_and_nothing_outside_the_repository() -> None:
    text = README.read_text(encoding="utf-8")
    links = MARKDOWN_LINK.findall(text)
    for doc in ("docs/architecture.md", "docs/behaviour.md", "docs/security.md"):
        assert doc in links, f"README does not link {doc}"
    assert "../shared" not in text


def test_links_between_docs_resolve() -> None:
    for page in [README, *sorted(DOCS.glob("*.md"))]:
        text = page.read_text(encoding="utf-8")
        assert "../shared" not in text, f"{page.name} points outside the repository"
        for target in MARKDOWN_LINK.findall(text):
            if "://" in target or target.startswith("#"):
                continue
            path = target.split("#", 1)[0]
            assert (page.parent / path).exists(), f"{page.name} links {target}, which does not exist"
