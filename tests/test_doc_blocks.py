"""The docs pages' measured tables are generated from the benchmark's results files.

The writer replaces exactly what lies between a block's two marker lines and nothing else; the
committed pages hold what the committed results render to; and the command a user runs
(`python -m ontosearch bench --write-docs`) rewrites them from a results directory.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ontosearch.bench import doc_blocks
from ontosearch.bench.doc_blocks import DocBlockError, marker, read_block, replace_block

REPO = Path(__file__).resolve().parents[1]


def _page(before: str, first: str, between: str, second: str, after: str) -> str:
    return (
        f"{before}{marker('one', 'start')}\n{first}{marker('one', 'end')}\n"
        f"{between}{marker('two', 'start')}\n{second}{marker('two', 'end')}\n{after}"
    )


def test_replace_block_rewrites_only_between_its_markers() -> None:
    before = "# Page\n\nProse above, with `<!-- bench:one:start -->` quoted inline.\n\n"
    between = "\nHand-written text between the blocks.\n\n"
    after = "\nProse below.\n"
    text = _page(before, "| old | table |\n", between, "other block\n", after)
    out = replace_block(text, "one", "| new | table |\n| 1 | 2 |")
    assert out == _page(before, "\n| new | table |\n| 1 | 2 |\n\n", between, "other block\n", after)
    # Idempotent: rewriting with the same body changes nothing.
    assert replace_block(out, "one", "| new | table |\n| 1 | 2 |") == out
    assert read_block(out, "one") == "| new | table |\n| 1 | 2 |"
    assert read_block(out, "two") == "other block"


def test_replace_block_keeps_crlf_pages_crlf() -> None:
    text = f"a\r\n{marker('one', 'start')}\r\nold\r\n{marker('one', 'end')}\r\nb\r\n"
    assert replace_block(text, "one", "x\ny") == (
        f"a\r\n{marker('one', 'start')}\r\n\r\nx\r\ny\r\n\r\n{marker('one', 'end')}\r\nb\r\n"
    )


@pytest.mark.parametrize(
    "text",
    [
        "no markers at all\n",
        f"{marker('one', 'start')}\nonly a start\n",
        f"{marker('one', 'start')}\n{marker('one', 'start')}\n{marker('one', 'end')}\n",
        f"{marker('one', 'end')}\nbackwards\n{marker('one', 'start')}\n",
    ],
    ids=["missing", "no-end", "two-starts", "end-before-start"],
)
def test_replace_block_refuses_broken_markers(text: str) -> None:
    with pytest.raises(DocBlockError, match="block 'one'"):
        replace_block(text, "one", "body", page="p.md")


def _copy_docs(tmp_path: Path) -> tuple[Path, Path]:
    docs = tmp_path / "docs"
    results = tmp_path / "results"
    shutil.copytree(REPO / "docs", docs)
    results.mkdir()
    for name in (doc_blocks.BENCH_RESULTS, doc_blocks.ACCURACY_RESULTS):
        shutil.copy(REPO / "bench" / "results" / name, results / name)
    return docs, results


def test_committed_pages_hold_what_the_committed_results_render_to() -> None:
    stale = doc_blocks.stale_blocks()
    assert not stale, (
        f"generated docs tables out of date with bench/results: {stale}; run "
        "`.venv/bin/python -m ontosearch bench --write-docs` (never edit a table between the markers by hand)"
    )


def test_write_docs_changes_a_measured_cell_and_nothing_outside_the_block(tmp_path: Path) -> None:
    docs, results = _copy_docs(tmp_path)
    accuracy = json.loads((results / "accuracy.json").read_text())
    row = next(
        r for r in accuracy["rows"]
        if (r["ontology"], r["set"], r["mode"]) == ("cl", "realworld", "matcher/synonyms")
    )
    measured = f"{row['top1']:.3f} / {row['top5']:.3f}"
    row["top1"] = 0.5
    (results / "accuracy.json").write_text(json.dumps(accuracy))
    pages_before = {p.name: p.read_text() for p in docs.glob("*.md")}

    changed = doc_blocks.write_docs(results, docs)

    assert changed == [docs / "matching.md"]
    text = (docs / "matching.md").read_text()
    # the other modes' cells as measured (read from the results, so a new measurement keeps the test valid)
    cells = {
        r["mode"]: f"{r['top1']:.3f} / {r['top5']:.3f}" for r in accuracy["rows"]
        if (r["ontology"], r["set"]) == ("cl", "realworld")
    }
    assert cells["matcher/synonyms"] == f"0.500 / {row['top5']:.3f}"
    expected = " | ".join(cells[mode] for mode in ("vector/labels", "vector/synonyms", "matcher/labels"))
    assert f"| cl | realworld ({row['n']}) | {expected} | 0.500 / {row['top5']:.3f} | 0.90 MISSED |" in text
    assert f"| cl | realworld ({row['n']}) | {expected} | {measured} |" not in read_block(text, "accuracy")
    old = pages_before["matching.md"]
    start, end = marker("accuracy", "start"), marker("accuracy", "end")
    assert text[: text.index(start)] == old[: old.index(start)]
    assert text[text.index(end):] == old[old.index(end):]
    for name, before in pages_before.items():
        if name != "matching.md":
            assert (docs / name).read_text() == before, name


def test_write_docs_writes_no_page_when_one_block_is_missing(tmp_path: Path) -> None:
    docs, results = _copy_docs(tmp_path)
    performance = docs / "performance.md"
    performance.write_text(performance.read_text().replace(marker("cold-start", "end"), ""))
    bench = json.loads((results / "bench.json").read_text())
    bench["meta"]["started"] = "2030-01-01T00:00:00+00:00"
    (results / "bench.json").write_text(json.dumps(bench))
    before = {p.name: p.read_text() for p in docs.glob("*.md")}
    with pytest.raises(DocBlockError, match="cold-start"):
        doc_blocks.write_docs(results, docs)
    assert {p.name: p.read_text() for p in docs.glob("*.md")} == before


def test_write_docs_command_renders_from_a_results_directory(tmp_path: Path) -> None:
    docs, results = _copy_docs(tmp_path)
    bench = json.loads((results / "bench.json").read_text())
    bench["snapshot_build"]["wall_s"] = 199.94
    (results / "bench.json").write_text(json.dumps(bench))
    done = subprocess.run(
        [sys.executable, "-m", "ontosearch", "bench", "--write-docs", "--out-dir", str(results),
         "--docs-dir", str(docs)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "- Build: 199.9 s wall, 462 CPU-s, peak RSS 653 MB in the largest process." in (
        docs / "snapshots.md"
    ).read_text()
    assert "`python -m ontosearch build-snapshot --ontologies cl,uberon,mondo --out ontologies-snapshot`: " \
        "199.9 s wall" in (docs / "performance.md").read_text()


def test_write_docs_command_says_what_is_missing(tmp_path: Path) -> None:
    docs, _ = _copy_docs(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "ontosearch", "bench", "--write-docs", "--out-dir", str(tmp_path / "empty"),
         "--docs-dir", str(docs)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1
    assert "bench.json is missing" in done.stderr or "accuracy.json is missing" in done.stderr
    assert "Traceback" not in done.stderr


def test_accuracy_script_refuses_to_write_docs_from_a_partial_run(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "bench/accuracy.py", "--ontologies", "cl", "--json", str(tmp_path / "a.json"),
         "--write-docs"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert "--write-docs" in done.stderr and "full grid" in done.stderr
    assert not (tmp_path / "a.json").exists()
