"""The measured tables of the docs/ pages, rendered from the benchmark's results files.

A docs page holds each table between two markers, `<!-- bench:NAME:start -->` and
`<!-- bench:NAME:end -->`. The writer replaces what lies between them and nothing else: the prose
around a table is written by hand, the table always comes from the results file the benchmark
wrote, so a page never shows numbers that no results file holds. `python -m ontosearch bench
--write-docs` renders every block from the committed results; a full benchmark run and
`bench/accuracy.py --write-docs` rewrite the blocks of the results they have just written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ontosearch.bench import report

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCS_DIR = REPO_ROOT / "docs"
RESULTS_DIR = REPO_ROOT / "bench" / "results"
BENCH_RESULTS = "bench.json"  # written by `python -m ontosearch bench` (report.write, stem "bench")
ACCURACY_RESULTS = "accuracy.json"  # written by `python bench/accuracy.py --json`

# The accuracy modes of bench/accuracy.py, in the order of the table's columns.
ACCURACY_COLUMNS = (
    ("vector/labels", "vector, labels"),
    ("vector/synonyms", "vector, +synonyms"),
    ("matcher/labels", "matcher, labels"),
    ("matcher/synonyms", "matcher, +synonyms (shipped)"),
)
SHIPPED_MODE = "matcher/synonyms"
ONTOLOGY_NAMES = {"cl": "CL", "uberon": "Uberon", "mondo": "MONDO"}
_BUILD_LINE = re.compile(r"^(?P<collection>\S+)\t(?P<terms>\d+) terms\t(?P<records>\d+) records$")


class DocBlockError(ValueError):
    """A page's generated-block markers are missing, repeated or out of order, or a source is missing."""


def marker(name: str, edge: str) -> str:
    return f"<!-- bench:{name}:{edge} -->"


def replace_block(text: str, name: str, body: str, page: str = "the page") -> str:
    """`text` with what lies between block `name`'s two marker lines replaced by `body`.

    The marker lines themselves and every byte outside them are kept as they are. Each marker must
    stand alone on its line exactly once, start before end, so a stray or half-deleted block is an
    error instead of a silent rewrite of the wrong part of a page.
    """
    start, end = marker(name, "start"), marker(name, "end")
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.strip() == start]
    ends = [i for i, line in enumerate(lines) if line.strip() == end]
    if len(starts) != 1 or len(ends) != 1:
        raise DocBlockError(
            f"{page}: block '{name}' needs exactly one line '{start}' and one line '{end}' "
            f"(found {len(starts)} and {len(ends)}); put the two markers around the generated table"
        )
    if ends[0] < starts[0]:
        raise DocBlockError(f"{page}: block '{name}' ends before it starts; put '{start}' above '{end}'")
    newline = "\r\n" if lines[starts[0]].endswith("\r\n") else "\n"
    content = body.strip("\n")
    # Blank lines inside the markers keep the comment lines separate blocks in every Markdown renderer.
    inner = [newline, *(line + newline for line in content.split("\n")), newline] if content else []
    return "".join(lines[: starts[0] + 1] + inner + lines[ends[0] :])


def read_block(text: str, name: str) -> str | None:
    """What lies between block `name`'s markers (without them), or None when the page has no such block."""
    start, end = marker(name, "start"), marker(name, "end")
    lines = text.splitlines()
    try:
        first = next(i for i, line in enumerate(lines) if line.strip() == start)
        last = next(i for i, line in enumerate(lines) if line.strip() == end)
    except StopIteration:
        return None
    return "\n".join(lines[first + 1 : last]).strip("\n")


def render_accuracy(results: dict[str, Any]) -> str:
    """Top-1 / top-5 per ontology and held-out set, one column per matcher mode (bench/accuracy.py)."""
    rows = results.get("rows", [])
    cells: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    versions: dict[str, str] = {}
    for row in rows:
        cells.setdefault((row["ontology"], row["set"]), {})[row["mode"]] = row
        if row.get("version"):
            versions.setdefault(row["ontology"], row["version"])
    spec = results.get("embedder", {})
    measured = results.get("measured") or "(the results file records no time)"
    shown_versions = ", ".join(f"{ONTOLOGY_NAMES.get(o, o)} {v}" for o, v in versions.items())
    out = [
        f"Measured {measured} by `bench/accuracy.py` with {spec.get('name', 'an unrecorded embedder')} "
        f"({spec.get('dimensions', '?')}-d), ontology versions {shown_versions or 'not recorded'}; "
        "top-1 / top-5.",
        "",
        "| ontology | set (n) | " + " | ".join(title for _, title in ACCURACY_COLUMNS) + " | target top-1 |",
        "|---|---|" + "---|" * len(ACCURACY_COLUMNS) + "---|",
    ]
    for (ontology, set_name), modes in cells.items():
        n = next(iter(modes.values()))["n"]
        shown = [
            f"{modes[mode]['top1']:.3f} / {modes[mode]['top5']:.3f}" if mode in modes else "-"
            for mode, _ in ACCURACY_COLUMNS
        ]
        goal = report.ACCURACY_TARGETS.get((ontology, set_name))
        shipped = modes.get(SHIPPED_MODE)
        verdict = (
            "" if goal is None or shipped is None
            else f"{goal:.2f} {'met' if shipped['top1'] >= goal else 'MISSED'}"
        )
        out.append(f"| {ontology} | {set_name} ({n}) | " + " | ".join(shown) + f" | {verdict} |")
    return "\n".join(out)


def render_run(results: dict[str, Any]) -> str:
    """The full run's conditions and every target with its verdict."""
    return "\n".join(
        [*report.run_lines(results["meta"]), "", *report.targets_lines(results.get("targets", []))]
    )


def render_cold_start(results: dict[str, Any]) -> str:
    cold = results.get("cold_start")
    if not cold:
        return f"Cold start was not measured in the run of {results['meta']['started']}."
    return "\n".join(report.cold_start_lines(cold))


def render_annotation(results: dict[str, Any]) -> str:
    annotation = results.get("annotation")
    out = (
        report.annotation_lines(annotation) if annotation
        else [f"Annotation throughput was not measured in the run of {results['meta']['started']}."]
    )
    build = results.get("snapshot_build")
    if build:
        out += ["", f"Snapshot build in the same run: {report.build_line(build)}"]
    return "\n".join(out)


def _collections(build: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(ontology, terms, records) per collection, from the lines `build-snapshot` printed."""
    found = []
    for line in build.get("output_tail", []):
        match = _BUILD_LINE.match(line)
        if match:
            ontology = match["collection"].split("_v", 1)[0]
            found.append((ontology, int(match["terms"]), int(match["records"])))
    return found


def render_snapshot(results: dict[str, Any]) -> str:
    """The three-ontology snapshot of the latest full run: sizes, build and cold start."""
    meta = results["meta"]
    out = [
        f"From the full benchmark run of {meta['started']} on {meta['machine']}:",
        "",
    ]
    build = results.get("snapshot_build") or {}
    collections = _collections(build)
    if collections:
        names = [ONTOLOGY_NAMES.get(o, o) for o, _, _ in collections]
        if len(collections) > 1:
            names.append("all three" if len(collections) == 3 else "all")
        shown = [f"{terms:,} / {records:,}" for _, terms, records in collections]
        if len(collections) > 1:
            shown.append(
                f"{sum(t for _, t, _ in collections):,} / {sum(r for _, _, r in collections):,}"
            )
        out += [
            "| | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
            "| terms / records (label, synonym and alias vectors) | " + " | ".join(shown) + " |",
            "",
        ]
    if build and "error" not in build:
        out.append(
            f"- Build: {report.fmt(build.get('wall_s'), 1)} s wall, {report.fmt(build.get('cpu_s'), 0)} "
            f"CPU-s, peak RSS {report.fmt(build.get('peak_rss_mb'), 0)} MB in the largest process."
        )
    cold = results.get("cold_start") or {}
    run = next((r for r in cold.get("runs", []) if r.get("snapshot") == "three ontologies"), None)
    if run:
        sizes = {row["compression"]: row for row in cold.get("compression", {}).get("three ontologies", [])}
        others = "".join(
            f", {report.fmt(row['archive_mb'], 1)} MB with {name}"
            for name, row in sizes.items()
            if name != run.get("compression") and row.get("archive_mb") is not None
        )
        out.append(
            f"- Persist directory {report.fmt(run.get('persist_mb'), 1)} MB; archive "
            f"{report.fmt(run.get('archive_mb'), 1)} MB with {run.get('compression')} "
            f"({report.fmt(run.get('archive_ratio'), 3)} of it){others}."
        )
        ph = run.get("phases", {})
        out.append(
            f"- From archive to first answer {report.fmt(run.get('total_s'))} s (median of "
            f"{len(run.get('trials', []))}): restore (sha256, safe unpack, catalogue check, atomic "
            f"placement) {report.fmt(ph.get('restore_s'))} s, `chroma run` healthy "
            f"{report.fmt(ph.get('chroma_start_s'))} s, proxy {report.fmt(ph.get('proxy_start_s'))} s, "
            f"first query through the proxy {report.fmt(ph.get('first_query_s'))} s."
        )
    return "\n".join(out)


@dataclass(frozen=True)
class Block:
    name: str
    page: str  # relative to the docs directory
    source: str  # the results file it is rendered from, relative to the results directory
    render: Callable[[dict[str, Any]], str]


BLOCKS = (
    Block("accuracy", "matching.md", ACCURACY_RESULTS, render_accuracy),
    Block("snapshot", "snapshots.md", BENCH_RESULTS, render_snapshot),
    Block("run", "performance.md", BENCH_RESULTS, render_run),
    Block("cold-start", "performance.md", BENCH_RESULTS, render_cold_start),
    Block("annotation", "performance.md", BENCH_RESULTS, render_annotation),
)


def _selected(sources: Iterable[str] | None) -> list[Block]:
    wanted = None if sources is None else set(sources)
    return [block for block in BLOCKS if wanted is None or block.source in wanted]


def rendered(
    results_dir: Path = RESULTS_DIR,
    sources: Iterable[str] | None = None,
    files: dict[str, Path] | None = None,
) -> dict[Block, str]:
    """Each block's body from the results files in `results_dir`.

    `sources` limits it to the blocks of those results files; `files` names a results file kept
    elsewhere (`{"accuracy.json": Path("/tmp/a.json")}`) and, without `sources`, limits it to those.
    """
    files = dict(files or {})
    out = {}
    loaded: dict[str, dict[str, Any]] = {}
    for block in _selected(sources if sources is not None or not files else files):
        path = Path(files.get(block.source) or Path(results_dir) / block.source)
        if block.source not in loaded:
            if not path.is_file():
                raise DocBlockError(
                    f"{path} is missing; run the benchmark that writes it, or point --out-dir at the "
                    "directory that holds it"
                )
            loaded[block.source] = json.loads(path.read_text(encoding="utf-8"))
        out[block] = block.render(loaded[block.source])
    return out


def write_docs(
    results_dir: Path = RESULTS_DIR,
    docs_dir: Path = DOCS_DIR,
    sources: Iterable[str] | None = None,
    files: dict[str, Path] | None = None,
) -> list[Path]:
    """Rewrite the generated blocks of the docs pages; returns the pages whose text changed.

    Every block is rendered, and every page checked for its markers, before any page is written,
    so a missing marker or results file leaves all pages as they were.
    """
    bodies = rendered(Path(results_dir), sources, files)
    pages: dict[Path, tuple[str, str]] = {}
    for block, body in bodies.items():
        path = Path(docs_dir) / block.page
        if path not in pages:
            if not path.is_file():
                raise DocBlockError(f"{path} is missing; it should hold block '{block.name}'")
            original = path.read_text(encoding="utf-8")
            pages[path] = (original, original)
        original, text = pages[path]
        pages[path] = (original, replace_block(text, block.name, body, page=str(path)))
    changed = []
    for path, (original, text) in pages.items():
        if text != original:
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    return changed


def stale_blocks(results_dir: Path = RESULTS_DIR, docs_dir: Path = DOCS_DIR) -> list[str]:
    """`page#block` for every block whose text differs from what its results file renders to."""
    stale = []
    for block, body in rendered(Path(results_dir)).items():
        path = Path(docs_dir) / block.page
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
        if read_block(text, block.name) != body.strip("\n"):
            stale.append(f"{block.page}#{block.name}")
    return stale
