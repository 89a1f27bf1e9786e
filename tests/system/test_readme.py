"""The project carries its own documentation: every link of README.md and docs/ resolves inside
the repository, so a clone has every page it points to."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.support.processes import REPO

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
#: Inline links and images, `[text](target "title")`, and reference definitions, `[x]: target`.
INLINE = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
CODE = re.compile(r"`[^`\n]*`")


def links(document: Path) -> list[str]:
    """The link targets of a Markdown file, outside code blocks and code spans."""
    text = CODE.sub("", FENCE.sub("", document.read_text()))
    return INLINE.findall(text) + REFERENCE.findall(text)


def anchors(document: Path) -> set[str]:
    """GitHub's ids of a Markdown file's headings."""
    text = FENCE.sub("", document.read_text())
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def relative(target: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE)  # no http:, mailto: …


def test_there_is_documentation_to_check() -> None:
    names = {d.relative_to(REPO).as_posix() for d in DOCUMENTS}
    assert {"README.md", "docs/rules.md", "docs/api.md"} <= names, names
    assert "docs/rules.md" in links(REPO / "README.md")
    assert "docs/api.md" in links(REPO / "README.md")


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda d: d.relative_to(REPO).as_posix())
def test_every_relative_link_resolves_inside_the_repository(document: Path) -> None:
    for target in filter(relative, links(document)):
        assert "../" not in target and not target.startswith("/"), (document.name, target)
        path, _, anchor = target.partition("#")
        linked = (document.parent / path).resolve() if path else document
        assert linked.is_relative_to(REPO), (document.name, target)
        assert linked.exists(), (document.name, target)
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), (document.name, target, sorted(anchors(linked)))


def test_nothing_in_the_repository_points_at_the_shared_folder() -> None:
    """The steering folder beside the checkout is not part of a clone."""
    outside = "../" + "shared"
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.decode()
    offenders = []
    for name in filter(None, tracked.split("\0")):
        path = REPO / name
        if path.is_file() and outside.encode() in path.read_bytes():
            offenders.append(name)
    assert offenders == []
