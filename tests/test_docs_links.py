"""The README and the docs pages: the README stays short and starts with the two commands, and every
relative link between the pages lands on a file that exists and, with a #fragment, on a heading of it.

Links and headings are read with markdown-it-py (the CommonMark parser), so links inside code
blocks are not links and reference-style links are; anchors follow GitHub's heading slugs.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from markdown_it import MarkdownIt

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
# The pages the README must lead a newcomer to (issue 14: one page per subject).
REQUIRED_PAGES = (
    "deploying.md", "batch-workflow.md", "matching.md", "snapshots.md", "performance.md",
    "reliability-and-security.md", "development.md", "usage.md",
)
README_MAX_LINES = 300
FIRST_COMMAND = (
    "bash scripts/setup.sh && .venv/bin/python -m ontosearch annotate --input examples/cell_types.txt "
    "--ontology cl --top-k 3 --output annotations.csv"
)

_md = MarkdownIt("commonmark").enable("table")


def _tokens(path: Path) -> list:
    return _md.parse(path.read_text(encoding="utf-8"))


def _inline_text(inline) -> str:
    """A heading's text as GitHub renders it: code spans keep their content, markup is dropped."""
    return "".join(child.content for child in inline.children or [] if child.type in ("text", "code_inline"))


def github_slug(text: str) -> str:
    """GitHub's heading anchor (github-slugger): lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    tokens = _tokens(path)
    for i, token in enumerate(tokens):
        if token.type == "heading_open":
            slug = github_slug(_inline_text(tokens[i + 1]))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(path: Path) -> list[str]:
    out = []
    for token in _tokens(path):
        for child in token.children or []:
            if child.type == "link_open":
                out.append(child.attrs["href"])
            elif child.type == "image":
                out.append(child.attrs["src"])
    return out


def _relative_links() -> list[tuple[Path, str]]:
    return [
        (page, href) for page in PAGES for href in links(page)
        if not urlsplit(href).scheme and not href.startswith("//")
    ]


def test_the_parser_finds_links_and_anchors_as_github_does(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text(
        "# Running the service locally: `serve`\n\n"
        "## Configuration (`ontosearch:*` in `Pulumi.<stack>.yaml`)\n\n"
        "## Notes\n\n## Notes\n\nSee [a](other.md#x) and [b][ref].\n\n```\n[not a link](nowhere.md)\n```\n\n"
        "[ref]: ../README.md\n",
        encoding="utf-8",
    )
    assert anchors(page) == {
        "running-the-service-locally-serve",
        "configuration-ontosearch-in-pulumistackyaml",
        "notes",
        "notes-1",
    }
    assert links(page) == ["other.md#x", "../README.md"]


def test_readme_is_short_and_starts_with_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    first_block = next(t for t in _tokens(README) if t.type == "fence")
    commands = [line for line in first_block.content.splitlines() if line and not line.startswith("#")]
    ci_command = [
        line for line in (REPO / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith("#") and not line.startswith(("set ", "cd "))
    ]
    assert commands[0] == FIRST_COMMAND
    # CI runs exactly the README's second command.
    assert commands[1:] == ci_command == ["bash scripts/setup.sh && .venv/bin/python -m pytest"]


def test_readme_links_every_docs_page() -> None:
    linked = {Path(urlsplit(href).path).name for href in links(README) if href.startswith("docs/")}
    missing = [name for name in REQUIRED_PAGES if name not in linked or not (DOCS / name).is_file()]
    assert not missing, f"README does not link (or docs/ lacks) {missing}"
    unlinked = [p.name for p in DOCS.glob("*.md") if p.name not in linked]
    assert not unlinked, f"docs pages no README link leads to: {unlinked}"


@pytest.mark.parametrize(
    ("page", "href"), _relative_links(), ids=[f"{p.name}->{h}" for p, h in _relative_links()]
)
def test_relative_link_resolves(page: Path, href: str) -> None:
    parts = urlsplit(href)
    where = page.relative_to(REPO)
    target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
    assert target.exists(), f"{where}: link {href!r} names {target}, which does not exist"
    assert REPO in target.parents or target == REPO, f"{where}: {href!r} leaves the repository"
    if parts.fragment:
        assert target.suffix == ".md", f"{where}: {href!r} has an anchor on a non-Markdown file"
        assert parts.fragment in anchors(target), (
            f"{where}: link {href!r}: {target.name} has no heading with anchor "
            f"#{parts.fragment}; its anchors: {sorted(anchors(target))}"
        )


def _table_rows(path: Path, first_header: str) -> dict[str, list[str]]:
    """The body rows of the page's table whose first header cell is `first_header`, keyed by their
    first cell (code spans unwrapped)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows: dict[str, list[str]] = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip().strip("`") for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def test_usage_states_the_measured_precision_of_each_confidence_class() -> None:
    """docs/usage.md's class table gives the numbers the code gives SSSOM consumers
    (ontosearch/confidence.py, measured in bench/results/confidence.md); a recalibration that
    changes them must change the page."""
    from ontosearch.confidence import CLASS_PRECISION, CONFIDENCE_CLASSES, LOWER_RANK_PRECISION

    rows = _table_rows(DOCS / "usage.md", "class")
    assert list(rows) == list(CONFIDENCE_CLASSES)
    for name, (precision, _n, _means) in rows.items():
        assert float(precision) == CLASS_PRECISION[name], name
    assert f"{LOWER_RANK_PRECISION:.1%}" in rows["low"][2]
    readme = " ".join(README.read_text(encoding="utf-8").split())  # as rendered: a line break is a space
    for name in CONFIDENCE_CLASSES:
        assert f"{name} {CLASS_PRECISION[name]:.3f}" in readme, f"README: {name} {CLASS_PRECISION[name]:.3f}"


def test_usage_explains_every_match_type() -> None:
    from ontosearch.matcher import MATCH_TYPES

    assert sorted(_table_rows(DOCS / "usage.md", "value")) == sorted(MATCH_TYPES)
