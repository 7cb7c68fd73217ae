"""Matching accuracy on the held-out sets in bench/data/ (top-1 and top-5 per ontology and set).

    python bench/accuracy.py                      # all three ontologies, all sets, all modes
    python bench/accuracy.py --ontologies cl --json bench/results/accuracy.json --failures
    python bench/accuracy.py --json bench/results/accuracy.json --write-docs   # + docs/matching.md's table

Seven sets per ontology: `realworld_<ontology>.tsv` (labels as scientists write them, assembled by
hand), `realworld2_<ontology>.tsv` (a second such set, written later without access to the matcher,
the alias tables or the first set, and disjoint from it), `realworld3_<ontology>.tsv` (a third,
written the same way after the label rewrites of `normalize.rewrite_label`, disjoint from both),
`realworld4_<ontology>.tsv` and `realworld5_<ontology>.tsv` (written blind from neutral briefs as
natural mixes, so they repeat common labels of the earlier sets; `<set>-new` scores only the rows no
earlier set holds), `published_<ontology>.tsv` (labels as atlases, cell-type references and data
portals publish them, written blind for issue 12 with the sources' own mappings as expected ids; a
different register from the real-world sets, so it is no part of their `-new` logic nor of the pooled
confidence calibration) and `variants_<ontology>.tsv` (systematic rewrites of ontology labels,
bench/variants.py).
Four modes answer "what does each part of the matcher buy":

    vector/labels     embeddings of term labels only, nearest neighbour (the plain baseline)
    vector/synonyms   + one vector per synonym, each term once
    matcher/labels    normalised exact hits on labels first, then label vectors
    matcher/synonyms  exact hits on labels and synonyms, then label and synonym vectors (shipped)

Both collections of an ontology are real Chroma collections built by `index_ontology` in a
temporary persist directory (or `--persist DIR` to keep and reuse them). Embeddings are cached per
embedder and text under the ontosearch cache directory, so a rerun does not re-embed 140K texts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ontosearch.bench.report import (  # noqa: E402
    ACCURACY_TARGETS,
    PUBLISHED_SETS,
    REAL_WORLD_SETS,
    REAL_WORLD_TARGETS,
)
from ontosearch.confidence import CONFIDENCE_CLASSES  # noqa: E402
from ontosearch.indexing import collection_name, index_ontology  # noqa: E402
from ontosearch.matcher import match  # noqa: E402
from ontosearch.ontologies import Ontology, load_ontology  # noqa: E402

DATA_DIR = Path(__file__).resolve().parent / "data"
SETS = (*REAL_WORLD_SETS, *PUBLISHED_SETS, "variants")
NEW_SUFFIX = "-new"  # "<set>-new": the rows of <set> whose label no earlier real-world set holds
MODES = ("vector/labels", "vector/synonyms", "matcher/labels", "matcher/synonyms")
TOP_K = 5
ACCURACY_ONTOLOGIES = tuple(REAL_WORLD_TARGETS)  # the ontologies a full run (and the docs table) covers


@dataclass(frozen=True)
class Case:
    label: str
    expected: frozenset[str]
    rule: str = ""


def read_set(name: str, ontology: str, data_dir: Path = DATA_DIR) -> list[Case]:
    """Rows of bench/data/<name>_<ontology>.tsv (comment lines start with '#', then a header).

    `<name>-new` is the part of set <name> that is new: rows whose label (ignoring case) no
    real-world set before it holds, so the matcher's rules were never tuned on them.
    """
    if name.endswith(NEW_SUFFIX):
        base = name[: -len(NEW_SUFFIX)]
        earlier = [s for s in REAL_WORLD_SETS[: REAL_WORLD_SETS.index(base)] if not s.endswith(NEW_SUFFIX)]
        seen = {
            case.label.casefold() for held_out in earlier for case in read_set(held_out, ontology, data_dir)
        }
        return [case for case in read_set(base, ontology, data_dir) if case.label.casefold() not in seen]
    path = data_dir / f"{name}_{ontology}.tsv"
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = [line for line in lines if line and not line.startswith("#")]
    header = rows[0].split("\t")
    cases = []
    for line in rows[1:]:
        fields = dict(zip(header, line.split("\t"), strict=True))
        cases.append(Case(fields["label"], frozenset(fields["expected"].split("|")), fields.get("rule", "")))
    return cases


class CachedEmbedder:
    """Wraps an embedder; remembers every text's vector in an .npz file so reruns skip the model.

    Same name and spec as the wrapped embedder: the collections it builds are ordinary collections
    of that embedder (the vectors are the very ones the model produced).
    """

    def __init__(self, inner: Any, path: Path) -> None:
        self.inner = inner
        self.name = inner.name
        self.dimensions = inner.dimensions
        self.path = path
        self.vectors: dict[str, np.ndarray] = self._read()
        self.dirty = False

    def _read(self) -> dict[str, np.ndarray]:
        if not self.path.exists():
            return {}
        with np.load(self.path, allow_pickle=False) as data:
            return dict(zip(data["texts"].tolist(), data["vectors"], strict=True))

    def spec(self) -> dict[str, Any]:
        return self.inner.spec()

    def embed(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        missing = list(dict.fromkeys(text for text in texts if text not in self.vectors))
        if missing:
            for text, vector in zip(missing, self.inner.embed(missing, progress=progress), strict=True):
                self.vectors[text] = vector
            self.dirty = True
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        return np.stack([self.vectors[text] for text in texts]).astype(np.float32)

    def save(self) -> None:
        if not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Another run may have saved meanwhile: keep its vectors too.
        self.vectors = {**self._read(), **self.vectors}
        texts = list(self.vectors)
        tmp = self.path.with_name(f"{self.path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, texts=np.array(texts), vectors=np.stack([self.vectors[t] for t in texts]))
        tmp.replace(self.path)
        self.dirty = False


def score(results: list[list[Any]], cases: list[Case]) -> dict[str, Any]:
    top1 = sum(
        1 for found, case in zip(results, cases, strict=True) if found and found[0].term_id in case.expected
    )
    top5 = sum(
        1 for found, case in zip(results, cases, strict=True)
        if any(m.term_id in case.expected for m in found[:TOP_K])
    )
    n = len(cases)
    return {"n": n, "top1": top1 / n if n else 0.0, "top5": top5 / n if n else 0.0}


def by_confidence(results: list[list[Any]], cases: list[Case]) -> dict[str, Any]:
    """Top-1 precision per confidence class of the first match, and of the rows after the first.

    What `ontosearch.confidence` promises: a label whose first match is of class C names the
    expected term with the precision measured here; a row after the first almost never does.
    """
    classes: dict[str, dict[str, int]] = {name: {"n": 0, "correct": 0} for name in CONFIDENCE_CLASSES}
    lower = {"n": 0, "correct": 0}
    for found, case in zip(results, cases, strict=True):
        if not found:
            continue
        first = classes.setdefault(found[0].confidence or "none", {"n": 0, "correct": 0})
        first["n"] += 1
        first["correct"] += found[0].term_id in case.expected
        for later in found[1:]:
            lower["n"] += 1
            lower["correct"] += later.term_id in case.expected
    return {**classes, "lower_ranks": lower}


def pooled_confidence(report: dict[str, Any], sets: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Per-class counts of the shipped mode summed over ontologies and the given sets (default:
    the real-world sets, without the "-new" parts that repeat their rows)."""
    wanted = set(sets) if sets is not None else {s for s in REAL_WORLD_SETS if not s.endswith(NEW_SUFFIX)}
    total: dict[str, dict[str, Any]] = {}
    for row in report["rows"]:
        if row["mode"] != "matcher/synonyms" or row["set"] not in wanted:
            continue
        for name, counts in row.get("confidence", {}).items():
            into = total.setdefault(name, {"n": 0, "correct": 0})
            into["n"] += counts["n"]
            into["correct"] += counts["correct"]
    for counts in total.values():
        counts["precision"] = counts["correct"] / counts["n"] if counts["n"] else None
    return total


def confidence_markdown(report: dict[str, Any]) -> str:
    """The per-class precision tables: pooled (what `ontosearch.confidence` cites), then per set."""
    spec = report["embedder"]
    names = [*CONFIDENCE_CLASSES, "lower_ranks"]
    lines = [
        "# Confidence classes: measured top-1 precision",
        "",
        f"Measured {report.get('measured', '')} with `python bench/accuracy.py --confidence-markdown ...` "
        f"(its matcher/synonyms rows), embedder {spec['name']}, the shipped matcher. A class's precision is "
        "the share of labels whose first match has that class and is the expected term; `lower_ranks` is "
        "the share of rows after the first that are. `CLASS_PRECISION` in ontosearch/confidence.py holds "
        "the pooled numbers.",
        "",
        "## Pooled over the real-world sets",
        "",
        "| ontologies | class | n | top-1 precision |",
        "|---|---|---:|---:|",
    ]
    ontologies = sorted({row["ontology"] for row in report["rows"]})
    pooled = pooled_confidence(report)
    for name in names:
        counts = pooled.get(name, {"n": 0, "precision": None})
        shown = "" if counts["precision"] is None else f"{counts['precision']:.3f}"
        lines.append(f"| {', '.join(ontologies)} | {name} | {counts['n']} | {shown} |")
    published = [s for s in PUBLISHED_SETS if any(row["set"] == s for row in report["rows"])]
    if published:
        # Not part of the calibration above: how the classes hold on labels as atlases and portals
        # publish them.
        title = f"## Pooled over the published sets ({', '.join(published)}; held out from the calibration)"
        lines += ["", title, "", "| ontologies | class | n | top-1 precision |", "|---|---|---:|---:|"]
        held_out = pooled_confidence(report, published)
        for name in names:
            counts = held_out.get(name, {"n": 0, "precision": None})
            shown = "" if counts["precision"] is None else f"{counts['precision']:.3f}"
            lines.append(f"| {', '.join(ontologies)} | {name} | {counts['n']} | {shown} |")
    lines += ["", "## Per ontology and set", "", "| ontology | set | " + " | ".join(names) + " |",
              "|---|---|" + "---:|" * len(names)]
    for row in report["rows"]:
        if row["mode"] != "matcher/synonyms" or "confidence" not in row:
            continue
        cells = []
        for name in names:
            counts = row["confidence"].get(name, {"n": 0, "correct": 0})
            cells.append(f"{counts['correct'] / counts['n']:.3f} (n={counts['n']})" if counts["n"] else "–")
        lines.append(f"| {row['ontology']} | {row['set']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def failures(results: list[list[Any]], cases: list[Case]) -> list[dict[str, Any]]:
    out = []
    for found, case in zip(results, cases, strict=True):
        if not found or found[0].term_id not in case.expected:
            out.append({
                "label": case.label,
                "expected": sorted(case.expected),
                "got": [(m.term_id, m.term_label, round(m.score, 3)) for m in found[:3]],
            })
    return out


def build(
    client: Any, ontology: Ontology, embedder: Any, reuse: bool, kinds: Sequence[str] = ("synonyms", "labels")
) -> dict[str, str]:
    """The ontology's collections with ("synonyms") and without ("labels") synonym vectors."""
    names = {}
    existing = {getattr(c, "name", c) for c in client.list_collections()}
    wanted = [(kind == "synonyms", kind[:3]) for kind in kinds]
    for synonyms, suffix in wanted:
        name = f"{collection_name(ontology.name, ontology.version)}_{suffix}"
        if not (reuse and name in existing):
            started = time.perf_counter()
            info = index_ontology(client, ontology, embedder, progress=True, synonyms=synonyms, name=name)
            print(f"  built {name}: {info['records']} records in {time.perf_counter() - started:.0f} s",
                  file=sys.stderr)
        names["synonyms" if synonyms else "labels"] = name
    return names


def run(
    ontologies: Sequence[str], sets: Sequence[str], modes: Sequence[str], persist: Path, embedder: Any,
    limit: int | None = None, data_dir: Path = DATA_DIR,
) -> dict[str, Any]:
    import chromadb

    client = chromadb.PersistentClient(path=str(persist))
    rows = []
    failed: dict[str, list[dict[str, Any]]] = {}
    for name in ontologies:
        ontology = load_ontology(name)
        print(f"{name} {ontology.version}: {len(ontology.terms)} terms", file=sys.stderr)
        kinds = sorted({mode.split("/")[1] for mode in modes}, reverse=True)
        collections = build(client, ontology, embedder, reuse=True, kinds=kinds)
        if isinstance(embedder, CachedEmbedder):
            embedder.save()
        for set_name in sets:
            cases = read_set(set_name, name, data_dir)[:limit]
            for mode in modes:
                kind, vectors = mode.split("/")  # vectors: "synonyms" or "labels"
                started = time.perf_counter()
                results = match(
                    [case.label for case in cases], name, top_k=TOP_K, client=client, embedder=embedder,
                    collection=collections[vectors], exact=(kind == "matcher"),
                )
                elapsed = time.perf_counter() - started
                row = {"ontology": name, "version": ontology.version, "set": set_name, "mode": mode,
                       **score(results, cases), "seconds": round(elapsed, 2)}
                if mode == "matcher/synonyms":
                    row["confidence"] = by_confidence(results, cases)
                rows.append(row)
                failed[f"{name}/{set_name}/{mode}"] = failures(results, cases)
        if isinstance(embedder, CachedEmbedder):
            embedder.save()
    return {"embedder": embedder.spec(), "top_k": TOP_K, "rows": rows, "failures": failed}


def table(report: dict[str, Any]) -> str:
    lines = [
        "| ontology | set | n | mode | top-1 | top-5 | target top-1 |",
        "|---|---|---:|---|---:|---:|---|",
    ]
    for row in report["rows"]:
        # issue 5's top-1 targets apply to the shipped mode
        target = (
            ACCURACY_TARGETS.get((row["ontology"], row["set"])) if row["mode"] == "matcher/synonyms" else None
        )
        verdict = "" if target is None else f"{target:.2f} {'met' if row['top1'] >= target else 'MISSED'}"
        lines.append(
            f"| {row['ontology']} {row['version']} | {row['set']} | {row['n']} | {row['mode']} "
            f"| {row['top1']:.3f} | {row['top5']:.3f} | {verdict} |"
        )
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    """The table with its conditions and the shipped mode's misses, for bench/results/."""
    import platform

    spec = report["embedder"]
    lines = [
        "# Matching accuracy",
        "",
        f"Measured {report.get('measured') or time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
        "with `python bench/accuracy.py` "
        f"on {platform.machine()} ({os.cpu_count()} cores), embedder {spec['name']} ({spec['dimensions']}-d, "
        f"{spec.get('pooling')} pooling), top-{TOP_K} results per label. Modes are explained in the script's "
        "docstring; matcher/synonyms is what `match()` and `annotate` ship.",
        "",
        table(report),
        "",
        "## Misses of the shipped mode",
        "",
    ]
    for key, misses in report["failures"].items():
        if not key.endswith("matcher/synonyms") or not misses:
            continue
        lines.append(f"### {key.rsplit('/', 2)[0]} ({len(misses)})")
        lines.append("")
        for miss in misses:
            got = "; ".join(f"{term_id} {label}" for term_id, label, _ in miss["got"][:2]) or "nothing"
            lines.append(f"- `{miss['label']}`: expected {', '.join(miss['expected'])}, got {got}")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ontologies", default="cl,uberon,mondo", help="comma-separated (default: all)")
    parser.add_argument("--sets", default=",".join(SETS), help=",".join(SETS))
    parser.add_argument("--modes", default=",".join(MODES), help=f"subset of {', '.join(MODES)}")
    parser.add_argument("--embedder", default=None, help="embedder name (default: the project default)")
    parser.add_argument("--persist", type=Path, default=None, help="keep the collections in this directory")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    parser.add_argument("--limit", type=int, default=None, help="only the first N labels of each set")
    parser.add_argument("--json", type=Path, default=None, help="also write the report (with failures) here")
    parser.add_argument("--markdown", type=Path, default=None, help="also write a Markdown report here")
    parser.add_argument("--failures", action="store_true", help="print the shipped mode's misses")
    parser.add_argument("--confidence-markdown", type=Path, default=None,
                        help="also write the top-1 precision per confidence class here")
    parser.add_argument(
        "--write-docs", action="store_true",
        help="also rewrite the accuracy table of docs/matching.md from this run (needs --json and the "
        "full grid: every ontology, set and mode, no --limit)",
    )
    args = parser.parse_args(argv)

    from ontosearch.embedders import cache_dir, get_embedder

    ontologies = [name.strip() for name in args.ontologies.split(",") if name.strip()]
    sets = [name.strip() for name in args.sets.split(",") if name.strip()]
    modes = [name.strip() for name in args.modes.split(",") if name.strip()]
    unknown = [mode for mode in modes if mode not in MODES] + [s for s in sets if s not in SETS]
    if unknown:
        parser.error(
            f"unknown mode/set {', '.join(unknown)}; modes: {', '.join(MODES)}; sets: {', '.join(SETS)}"
        )
    full_grid = (set(ontologies), set(sets), set(modes)) == (set(ACCURACY_ONTOLOGIES), set(SETS), set(MODES))
    if args.write_docs and (args.json is None or not full_grid or args.limit is not None):
        parser.error(
            "--write-docs renders docs/matching.md from the --json file and needs the full grid; "
            "run with --json bench/results/accuracy.json and without --ontologies/--sets/--modes/--limit"
        )
    embedder: Any = get_embedder(args.embedder)
    if not args.no_cache:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in embedder.name)
        embedder = CachedEmbedder(embedder, cache_dir() / "bench" / f"embeddings-{safe}.npz")

    measured = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    started = time.perf_counter()
    if args.persist is not None:
        report = run(ontologies, sets, modes, args.persist, embedder, args.limit)
    else:
        with tempfile.TemporaryDirectory(prefix="ontosearch-accuracy-") as tmp:
            report = run(ontologies, sets, modes, Path(tmp), embedder, args.limit)
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["measured"] = measured
    print(table(report))
    if args.failures:
        for key, misses in report["failures"].items():
            if key.endswith("matcher/synonyms") and misses:
                print(f"\n{key}: {len(misses)} misses")
                for miss in misses:
                    print(f"  {miss['label']!r}: expected {miss['expected']}, got {miss['got']}")
    if any("confidence" in row for row in report["rows"]):
        print("\n" + confidence_markdown(report).split("## Per ontology", 1)[0].strip())
    if args.confidence_markdown is not None:
        args.confidence_markdown.parent.mkdir(parents=True, exist_ok=True)
        args.confidence_markdown.write_text(confidence_markdown(report) + "\n", encoding="utf-8")
        print(f"wrote {args.confidence_markdown}", file=sys.stderr)
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(report) + "\n", encoding="utf-8")
        print(f"wrote {args.markdown}", file=sys.stderr)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {args.json}", file=sys.stderr)
    if args.write_docs:
        from ontosearch.bench import doc_blocks

        for page in doc_blocks.write_docs(files={doc_blocks.ACCURACY_RESULTS: args.json}):
            print(f"wrote {page}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
