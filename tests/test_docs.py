"""Every document the code cites exists in ``docs/``, with the cited section.

A citation is ``docs/<name>.md`` optionally followed by ``section N`` / ``section N.M`` or a bare ``N.M``
(``docs/kernels.md section 5``, ``docs/pose-formats.md`` 2.1). It resolves when the file exists and, if a
section is named, a markdown heading of the file starts with that number (``## 5. ...``, ``### 6.4 ...``).
Citations of files outside the repository (``shared/``, ``../shared``) and the old note names (``vhpe-notes``,
``kernel-notes``, ``conventions.md``, ``design.md`` / ``paper.md`` without ``docs/``) are reported too.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("kernels", "reference", "model", "vhpe", "bench", "glsmamba", "tests")

CITATION = re.compile(
    r"docs/(?P<name>[A-Za-z0-9_.-]+?\.md)`*"
    r"(?:,?\s+(?:section\s+(?P<sec>\d+(?:\.\d+)*)|(?P<num>\d+\.\d+(?:\.\d+)*)))?"
)
HEADING = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)\.?(?:\s|$)", re.MULTILINE)
# "shared/" also covers "../shared/"; old note names are wrong with or without a folder; design.md / paper.md are
# only wrong when they do not come right after "docs/".
FORBIDDEN = (
    (re.compile(r"shared/"), "cites a file outside the repository"),
    (re.compile(r"vhpe-notes|kernel-notes|(?<![\w/.-])conventions\.md"), "cites an old note name"),
    (re.compile(r"(?<!docs/)(?<![\w.-])(?:design|paper)\.md"), "cites design.md / paper.md without docs/"),
)
# A comment wrapped over lines: join "...docs/x.md\n    # section 3" into one line before matching.
COMMENT_WRAP = re.compile(r"\n[ \t]*#[ \t]*")


def sections(doc: Path) -> set[str]:
    """The section numbers of the headings of ``doc`` (``"5"``, ``"6.4"``)."""
    return set(HEADING.findall(doc.read_text(encoding="utf-8")))


def problems(text: str, where: str, root: Path = ROOT, in_docs: bool = False) -> list[str]:
    """Every citation in ``text`` that does not resolve under ``root``, and every forbidden citation.

    ``in_docs``: ``text`` is a file of ``docs/``, where a bare ``design.md`` names its sibling (allowed).
    """
    out: list[str] = []
    for m in CITATION.finditer(COMMENT_WRAP.sub(" ", text)):
        name, sec = m.group("name"), m.group("sec") or m.group("num")
        doc = root / "docs" / name
        if not doc.is_file():
            out.append(f"{where}: cites docs/{name}, which does not exist")
        elif sec is not None and sec not in sections(doc):
            out.append(f"{where}: cites docs/{name} section {sec}; the file has no heading numbered {sec} "
                       f"(it has {sorted(sections(doc))})")
    for pattern, why in FORBIDDEN[:2] if in_docs else FORBIDDEN:
        for m in pattern.finditer(text):
            line = text[: m.start()].count("\n") + 1
            out.append(f"{where}:{line}: {why}: {text[max(0, m.start() - 30): m.end() + 30]!r}")
    return out


def scanned_files(root: Path = ROOT) -> list[Path]:
    files = [p for d in SCANNED for p in sorted((root / d).rglob("*.py")) if "__pycache__" not in p.parts]
    # this file holds the forbidden strings as test data; the documents and the README cite each other
    files = [p for p in files if p.resolve() != Path(__file__).resolve()]
    return files + sorted((root / "docs").glob("*.md")) + [root / "README.md"]


# ------------------------------------------------------------------------------------------------ the repository

def test_the_scan_sees_the_code_and_the_citations():
    files = scanned_files()
    assert len(files) > 50
    assert ROOT / "model" / "config.py" in files and ROOT / "tests" / "harness.py" in files
    cited = [m.group("name") for p in files for m in CITATION.finditer(p.read_text(encoding="utf-8"))]
    assert {"design.md", "paper.md", "kernels.md", "pose-formats.md"} <= set(cited)


def test_every_cited_document_and_section_exists():
    found = []
    for p in scanned_files():
        text = p.read_text(encoding="utf-8")
        found += problems(text, str(p.relative_to(ROOT)), in_docs=p.parent == ROOT / "docs")
    assert not found, "\n".join(found)


def test_the_docs_index_lists_every_document():
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"\]\(([\w.-]+\.md)\)", index))
    present = {p.name for p in (ROOT / "docs").glob("*.md")} - {"README.md"}
    assert listed == present


# ------------------------------------------------------------------------------------------------ the checker fails

@pytest.mark.parametrize("text, expected", [
    ("see docs/nope.md", "does not exist"),
    ("(``docs/kernels.md`` section 99)", "no heading numbered 99"),
    ("(docs/kernels.md 6.9 property)", "no heading numbered 6.9"),
    ("(``docs/pose-formats.md``,\n    # section 42)", "no heading numbered 42"),
    ("details in ../shared/design.md", "outside the repository"),
    ("see /work/shared/paper.md section 6", "outside the repository"),
    ("formats: vhpe-notes.md §1", "old note name"),
    ("traffic model: kernel-notes section 5", "old note name"),
    ("style as in conventions.md", "old note name"),
    ("the layout of design.md section 1", "without docs/"),
    ("open points: paper.md section 6", "without docs/"),
])
def test_a_bad_citation_is_reported(text, expected):
    found = problems(text, "fake.py")
    assert any(expected in msg for msg in found), found


@pytest.mark.parametrize("text", [
    "(docs/kernels.md 6.4 property)",
    "Traffic model (docs/kernels.md section 5; s = bytes per element)",
    "Conventions (``docs/pose-formats.md`` section 3):",
    "Semantics (``docs/pose-formats.md`` 2.3):",
    "(docs/design.md section 4; the decisions are in model/config.py)",
    "see ``docs/paper.md``) fixes the pipeline, version 1.2 of nothing",
    "a README.md, bench/results/README.md and summary.md are not notes",
])
def test_a_good_citation_passes(text):
    assert problems(text, "fake.py") == []


def test_inside_docs_a_sibling_may_be_named_bare_but_shared_is_still_reported():
    assert problems("[design.md](design.md)", "docs/README.md", in_docs=True) == []
    assert problems("[design.md](design.md)", "model/x.py")
    assert problems("see ../shared/kernel-notes.md", "docs/README.md", in_docs=True)


def test_a_section_is_matched_by_its_heading_number(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "x.md").write_text("# X\n\n## 1. One\n\n### 1.2 Two\n\ntext 3.4 here\n## 10 Ten\n")
    assert problems("docs/x.md section 1, docs/x.md 1.2, docs/x.md section 10", "f", tmp_path) == []
    assert problems("docs/x.md 3.4", "f", tmp_path)  # a number in the text is not a heading
    assert problems("docs/x.md section 2", "f", tmp_path)
