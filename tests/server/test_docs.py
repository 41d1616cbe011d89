"""The docs stand on their own in a clone: no link leaves the repository, every relative
link lands on a file, and the field-gating table is the one the code gates with."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from imds_server._versions import FIELDS

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
_LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_no_reference_leaves_the_repository(doc: Path) -> None:
    text = doc.read_text()
    for pattern in (r"\.\./", r"/work/", r"\bshared/[A-Za-z-]+\.md"):
        match = re.search(pattern, text)
        assert match is None, f"{doc.name}: {text[max(match.start() - 40, 0):match.end() + 20]!r}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_land_on_files(doc: Path) -> None:
    for target in _LINK.findall(doc.read_text()):
        if target.startswith(("http://", "https://", "mailto:", "#")):
            continue
        path = (doc.parent / target.partition("#")[0]).resolve()
        assert path.exists(), f"{doc.name} links to {target}, which is not in the repository"
        assert ROOT in path.parents or path == ROOT


def test_wire_doc_lists_every_gated_field() -> None:
    text = (ROOT / "docs" / "wire.md").read_text()
    rows = dict(re.findall(r"^\| `([A-Za-z.]+)` \| (\d{4}-\d{2}-\d{2}) \|$", text, re.M))
    expected = {".".join(path): since for path, since in FIELDS.items()}
    missing = {k: v for k, v in expected.items() if rows.get(k) != v}
    assert not missing, f"docs/wire.md field table lacks or misdates: {missing}"
    assert set(rows) <= set(expected), set(rows) - set(expected)
