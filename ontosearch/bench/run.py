"""`python -m ontosearch bench [--quick] [--out-dir bench/results]`: every section of issue 5 in one run.

Sections: 1 query path (synthetic seed-scale collection and the real ontology collections), 2 cold
start and archive sizes, 3 annotation throughput and the snapshot build, 4 accuracy, 5 cost. Each
section's failure is recorded in the results and the exit code, never hidden, and the others still
run. `--quick` is the CI smoke test: a small synthetic collection, short runs, no model build; it
checks that everything is produced and well-formed, not how fast it is. A full run that skipped
nothing and failed nowhere also rewrites the measured tables of the docs pages from its results
(`ontosearch.bench.doc_blocks`); `--write-docs` does only that, from results already written.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ontosearch.bench import annotation, cold_start, doc_blocks, plots, query_path, report, synthetic
from ontosearch.constants import CHROMA_VERSION

SEED_VECTORS = 65_000
SEED_DIMENSIONS = 768
QUICK_VECTORS = 5_000
REPO_ROOT = Path(__file__).resolve().parents[2]


def _log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ontosearch bench",
        description="Benchmark the query paths (auth proxy, direct chroma run, in-process, exact numpy), "
        "cold "
        "start, annotation throughput, accuracy and cost; writes JSON, Markdown and PNG plots.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test under 2 minutes: 5,000 x 768 synthetic vectors, short runs, no model "
        "build (asserts nothing about speed)",
    )
    parser.add_argument("--out-dir", default="bench/results", help="where results go (default bench/results)")
    parser.add_argument(
        "--snapshot",
        help="use this three-ontology snapshot directory instead of building one "
        "(the build is then not timed)",
    )
    parser.add_argument(
        "--snapshot-build",
        help="with --snapshot: the JSON record of how that snapshot's build was timed (written by "
        "ontosearch.bench.annotation.timed_build), reported as the snapshot build section",
    )
    parser.add_argument(
        "--vectors",
        type=int,
        help=f"synthetic collection size (default {SEED_VECTORS:,}, quick {QUICK_VECTORS:,})",
    )
    parser.add_argument(
        "--duration", type=float, help="seconds per path and concurrency (default 4, quick 0.5)"
    )
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated sections to skip: synthetic,ontologies,annotation,workflow,accuracy,cost",
    )
    parser.add_argument(
        "--cache-dir",
        help="keep the synthetic persist directory here between runs (default: "
        "the ontosearch cache directory; building 65,000 x 768 takes minutes)",
    )
    parser.add_argument("--stack", default="prod", help="stack priced in the cost section (default prod)")
    parser.add_argument(
        "--write-docs",
        action="store_true",
        help="run nothing: rewrite the generated tables of the docs pages from the results in --out-dir "
        "(bench.json and accuracy.json) and exit",
    )
    parser.add_argument(
        "--docs-dir",
        default=str(doc_blocks.DOCS_DIR),
        help="the docs pages whose generated tables a full run or --write-docs rewrites "
        "(default: docs/ of this checkout)",
    )
    parser.add_argument(
        "--no-docs",
        action="store_true",
        help="a full run leaves the docs pages alone (by default it rewrites their tables from its results)",
    )
    return parser


def _machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 2**20:.0f} GiB RAM"
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores ({model or platform.machine()}), {memory}, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, chromadb {CHROMA_VERSION}, "
        f"{_nginx_version()}"
    )


def _nginx_version() -> str:
    import subprocess

    try:
        from ontosearch.proxy import nginx_executable

        done = subprocess.run([nginx_executable(), "-v"], capture_output=True, text=True, timeout=10)
        return (done.stderr or done.stdout).strip().replace("nginx version: ", "")
    except Exception:
        return "nginx unknown"


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f}/{five:.1f}/{fifteen:.1f}"


def _cache_root(args: argparse.Namespace) -> Path:
    if args.cache_dir:
        return Path(args.cache_dir)
    from ontosearch.embedders import cache_dir

    return cache_dir() / "bench"


def _hnsw_text(metadata: dict[str, Any]) -> str:
    return ", ".join(f"{k.split(':', 1)[1]}={v}" for k, v in metadata.items() if k.startswith("hnsw:"))


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        from ontosearch.indexing import HNSW_METADATA

        self.args = args
        self.quick = bool(args.quick)
        self.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
        self.hnsw = dict(HNSW_METADATA)
        self.settings = query_path.QuerySettings(
            duration=args.duration or (0.5 if self.quick else 4.0),
            batch=64 if self.quick else 256,
            batch_repeats=2 if self.quick else 7,
            recall_queries=100 if self.quick else 300,
        )
        self.results: dict[str, Any] = {"query": [], "errors": {}}
        self.work = Path(tempfile.mkdtemp(prefix="ontosearch-bench-"))

    def section(self, name: str, func: Any, *args: Any) -> Any:
        if name in self.skip:
            _log(f"{name}: skipped (--skip)")
            return None
        _log(f"{name} ...")
        started = time.perf_counter()
        try:
            value = func(*args)
        except Exception as exc:
            traceback.print_exc()
            self.results["errors"][name] = f"{type(exc).__name__}: {exc}"
            _log(f"{name}: FAILED ({exc})")
            return None
        _log(f"{name}: done in {time.perf_counter() - started:.0f} s")
        return value

    # 1 + 2 on the synthetic collection
    def synthetic(self) -> None:
        n = self.args.vectors or (QUICK_VECTORS if self.quick else SEED_VECTORS)
        vectors = synthetic.make_vectors(n, SEED_DIMENSIONS)
        queries = synthetic.make_queries(vectors, 500 if self.quick else 1000)
        if self.quick:
            persist = self.work / "synthetic"
            _log(f"building {n:,} x {SEED_DIMENSIONS} synthetic collection in {persist}")
            build = synthetic.build_persist_dir(persist, vectors, metadata=self.hnsw)
            build["cached"] = False
        else:
            persist, build = synthetic.cached_persist_dir(
                vectors, _cache_root(self.args), self.hnsw, log=_log
            )
        name = f"synthetic {n:,} x {SEED_DIMENSIONS}"
        dataset = query_path.Dataset(
            name,
            persist,
            synthetic.COLLECTION,
            queries,
            vectors,
            synthetic.ids(n),
            notes={"build": build, "data": synthetic.__doc__.split("\n\n")[1].replace("\n", " ")},
        )
        measured = query_path.measure(dataset, self.settings, log=_log)
        measured["seed_scale"] = n >= SEED_VECTORS or self.quick
        measured["hnsw"] = _hnsw_text(self.hnsw)
        self.results["query"].append(measured)
        self._cold_start(
            name,
            persist,
            [synthetic.COLLECTION],
            queries[0],
            seed_scale=measured["seed_scale"],
            embedder={
                "name": "synthetic",
                "dimensions": SEED_DIMENSIONS,
                "pooling": "none",
                "normalize": True,
            },
            terms=n,
        )

    def _cold_start(
        self,
        name: str,
        persist: Path,
        collections: list[str],
        query: np.ndarray,
        seed_scale: bool,
        embedder: dict[str, Any] | None = None,
        terms: int = 0,
        snapshot_dir: Path | None = None,
    ) -> None:
        from ontosearch.manifest import CollectionInfo, Manifest
        from ontosearch.snapshot_build import snapshot_from_persist_dir

        cold = self.results.setdefault("cold_start", {"runs": [], "compression": {}, "fargate": {}})
        if snapshot_dir is None:
            snapshot_dir = self.work / f"snapshot-{len(cold['runs'])}"
            infos = [
                CollectionInfo(
                    name=c, ontology="synthetic", source_version="seed", terms=terms, records=terms
                )
                for c in collections
            ]
            snapshot_from_persist_dir(
                persist,
                snapshot_dir,
                infos,
                embedder or {},
                compression="gz",
                verify=False,
                log=lambda _m: None,
                progress=False,
            )
        manifest = Manifest.load(snapshot_dir)
        trials = []
        for trial in range(1 if self.quick else 3):
            workdir = self.work / f"cold-{len(cold['runs'])}-{trial}"
            workdir.mkdir()
            try:
                trials.append(cold_start.time_cold_start(snapshot_dir, collections[-1], query, workdir))
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
        best = sorted(trials, key=lambda t: t["total_s"])[len(trials) // 2]
        serve = cold_start.time_serve(snapshot_dir, collections[-1], query)
        run = {
            "snapshot": name,
            "compression": manifest.archive.compression,
            "seed_scale": seed_scale,
            "archive_mb": manifest.archive.bytes / 1e6,
            "persist_mb": manifest.persist_bytes / 1e6,
            "archive_ratio": manifest.archive.bytes / manifest.persist_bytes,
            "total_s": statistics.median(t["total_s"] for t in trials),
            "phases": best["phases"],
            "second_query_ms": best["second_query_ms"],
            "trials": [t["total_s"] for t in trials],
            "serve_ready_s": serve["ready_s"],
            "serve_first_query_s": serve["first_query_s"],
        }
        cold["runs"].append(run)
        compressions = ["gz", "zst"] if self.quick else None
        cold["compression"][name] = cold_start.compression_table(persist, compressions)
        cold["fargate"][name] = cold_start.fargate_estimate(run["archive_mb"], best)

    # 1 + 2 + 3 + 4 on the real ontology snapshot
    def ontologies(self) -> None:
        from ontosearch.manifest import Manifest
        from ontosearch.restore import restore_from_dir

        if self.args.snapshot:
            snapshot_dir = Path(self.args.snapshot)
            if self.args.snapshot_build:
                record = json.loads(Path(self.args.snapshot_build).read_text())
                record["note"] = "timed when the snapshot was built, before this run"
                self.results["snapshot_build"] = record
        else:
            snapshot_dir = self.work / "ontologies-snapshot"
            _log("building the three-ontology snapshot (build-snapshot, timed)")
            build = annotation.timed_build(["cl", "uberon", "mondo"], snapshot_dir)
            self.results["snapshot_build"] = build
            if "error" in build:
                raise RuntimeError(build["error"])
        self.snapshot_dir = snapshot_dir
        manifest = Manifest.load(snapshot_dir)
        restored = self.work / "ontologies-data"
        restore_from_dir(snapshot_dir, restored, log=lambda _m: None)
        from ontosearch.embedders import get_embedder

        embedder = get_embedder(manifest.embedder["name"])
        first_query = None
        for info in manifest.collections:
            labels = _query_labels(info.ontology)
            queries = embedder.embed(labels)
            first_query = queries[0]
            dataset = query_path.Dataset(
                f"{info.ontology} ({info.records:,} records)", restored, info.name, queries
            )
            settings = query_path.QuerySettings(
                **{**asdict(self.settings), "duration": min(self.settings.duration, 2.0)}
            )
            measured = query_path.measure(dataset, settings, log=_log)
            measured["seed_scale"] = False
            measured["hnsw"] = _hnsw_text(self.hnsw)
            measured["notes"] = {
                "queries": "held-out real-world and variant labels of bench/data, embedded with "
                f"{manifest.embedder['name']}"
            }
            self.results["query"].append(measured)
        assert first_query is not None
        self._cold_start(
            "three ontologies",
            restored,
            [c.name for c in manifest.collections],
            first_query,
            seed_scale=False,
            snapshot_dir=snapshot_dir,
        )
        self.restored = restored

    def annotation(self) -> None:
        labels = annotation.make_labels(1_000 if self.quick else annotation.LABELS)
        path = annotation.write_labels(self.work / "labels.txt", labels)
        section: dict[str, Any] = {
            "rows": len(labels),
            "unique": len(set(labels)),
            "duplicate_share": 1 - len(set(labels)) / len(labels),
            "ontology": "cl",
        }
        self.results["annotation"] = section
        section["embedder_alone"] = annotation.embedder_alone(labels)
        snapshot = getattr(self, "snapshot_dir", None)
        if snapshot is None:
            section["annotate"] = {"error": "not measured: needs the ontology snapshot (skipped in --quick)"}
            return

        def measure(command: str, *extra: str) -> dict:
            out = self.work / f"{command}.csv"
            result = annotation.run_command(
                [command, "--input", str(path), "--ontology", "cl", "--top-k", "3", "--output", str(out),
                 "--snapshot", str(snapshot), *extra],
                len(labels),
            )
            if out.exists():
                result["output_rows"] = annotation.count_output_rows(out)
            return result

        section["annotate"] = measure("annotate")
        if "workflow" not in self.skip:
            section["workflow"] = measure("workflow", "--quiet")

    def accuracy(self) -> None:
        restored = getattr(self, "restored", None)
        if restored is None:
            raise RuntimeError("needs the ontology snapshot (skipped in --quick or failed above)")
        from ontosearch.manifest import Manifest

        manifest = Manifest.load(self.snapshot_dir)
        collections = {c.ontology: c.name for c in manifest.collections}
        from ontosearch.bench.child import run_in_child

        rows, _wall, _peak = run_in_child(
            _accuracy_rows, str(restored), collections, manifest.embedder["name"]
        )
        self.results["accuracy"] = {
            "rows": rows,
            "mode": "matcher/synonyms (shipped)",
            "other_modes": "python bench/accuracy.py (vector/labels, vector/synonyms, matcher/labels)",
        }

    def cost(self) -> None:
        from ontosearch import cost

        # One query Lambda (3 GB: about 2 vCPU) embeds and queries at about twice the per-CPU-second
        # rate `annotate` showed in this run; without that measurement the documented default holds.
        measured = (self.results.get("annotation") or {}).get("annotate") or {}
        overrides = {}
        if measured.get("labels_per_cpu_s") and "error" not in measured:
            overrides["batch_rate_labels_per_s"] = round(2 * measured["labels_per_cpu_s"])
        estimate = cost.estimate(self.args.stack, labels=annotation.LABELS, assumptions=overrides)
        estimate["text"] = cost.render(estimate)
        estimate["rate_source"] = (
            "2 x annotate's labels per CPU-second in this run" if overrides else "documented default"
        )
        self.results["cost"] = estimate

    def run(self) -> int:
        started = datetime.now(UTC)
        load_before = _load()
        t0 = time.perf_counter()
        try:
            self.section("synthetic", self.synthetic)
            if not self.quick:
                self.section("ontologies", self.ontologies)
            self.section("annotation", self.annotation)
            if not self.quick:
                self.section("accuracy", self.accuracy)
            self.section("cost", self.cost)
        finally:
            shutil.rmtree(self.work, ignore_errors=True)
        elapsed = time.perf_counter() - t0
        self.results["meta"] = {
            "quick": self.quick,
            "started": started.replace(microsecond=0).isoformat(),
            "finished": datetime.now(UTC).replace(microsecond=0).isoformat(),
            "elapsed_s": elapsed,
            "machine": _machine(),
            "conditions": f"load average (1/5/15 min) {load_before} at start, {_load()} at end; other "
            "processes were running on the same 2 cores (see the load); every ratio is "
            "measured within this run.",
            "settings": asdict(self.settings),
        }
        self.results["targets"] = report.evaluate_targets(self.results)
        out_dir = Path(self.args.out_dir)
        stem = "bench-quick" if self.quick else "bench"
        paths = report.write(self.results, out_dir, stem)
        if self.results["query"]:
            plots.latency_plot(self.results["query"], out_dir / f"{stem}-latency.png")
            plots.throughput_plot(self.results["query"], out_dir / f"{stem}-throughput.png")
        for target in self.results["targets"]:
            measured = target["measured"]
            shown = f"{measured:.3f}" if isinstance(measured, float) else str(measured)
            print(
                f"{target['status']:4}  {target['target']}: {shown} (goal {target['goal']})"
                f"{'  ' + target['detail'] if target['detail'] else ''}"
            )
        print(f"bench: wrote {paths['json']}, {paths['markdown']} and plots in {elapsed:.0f} s")
        if not self.quick and not self.args.no_docs:
            if self.skip or self.results["errors"]:
                # A partial run would replace the docs' tables with fewer rows; say so instead.
                print(
                    "bench: docs tables left as they were (sections skipped or failed); "
                    f"`--write-docs --out-dir {out_dir}` renders them from these results anyway"
                )
            else:
                _write_docs(out_dir, Path(self.args.docs_dir), sources=[f"{stem}.json"])
        if self.results["errors"]:
            print(f"bench: sections failed: {', '.join(self.results['errors'])}", file=sys.stderr)
            return 1
        return 0


def _query_labels(ontology: str, limit: int = 400) -> list[str]:
    """Real labels to query with: the held-out sets when this is a source checkout, else term labels."""
    data = REPO_ROOT / "bench" / "data"
    labels: list[str] = []
    for set_name in ("realworld", "variants"):
        path = data / f"{set_name}_{ontology}.tsv"
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines()[1:]:
                if line and not line.startswith("#") and not line.startswith("label\t"):
                    labels.append(line.split("\t", 1)[0])
    if not labels:
        from ontosearch.ontologies import load_ontology

        labels = [t.label for t in load_ontology(ontology).terms[:limit]]
    return labels[:limit]


def _accuracy_module() -> Any:
    path = REPO_ROOT / "bench" / "accuracy.py"
    if not path.exists():
        raise RuntimeError(f"{path} is missing; the accuracy section needs a source checkout")
    spec = importlib.util.spec_from_file_location("ontosearch_bench_accuracy", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _accuracy_rows(persist_dir: str, collections: dict[str, str], embedder_name: str) -> list[dict[str, Any]]:
    """Child-process body: the shipped matcher on the snapshot's collections, scored by bench/accuracy.py."""
    import chromadb

    from ontosearch.embedders import get_embedder
    from ontosearch.matcher import match

    accuracy = _accuracy_module()
    client = chromadb.PersistentClient(path=persist_dir)
    embedder = get_embedder(embedder_name)
    rows = []
    for ontology, name in collections.items():
        for set_name in accuracy.SETS:
            cases = accuracy.read_set(set_name, ontology)
            started = time.perf_counter()
            results = match(
                [c.label for c in cases],
                ontology,
                top_k=accuracy.TOP_K,
                client=client,
                embedder=embedder,
                collection=name,
            )
            rows.append(
                {
                    "ontology": ontology,
                    "set": set_name,
                    **accuracy.score(results, cases),
                    "seconds": round(time.perf_counter() - started, 2),
                }
            )
    return rows


def _write_docs(results_dir: Path, docs_dir: Path, sources: list[str] | None = None) -> bool:
    """Rewrite the docs pages' generated tables; a problem is reported, never raised past the results."""
    try:
        changed = doc_blocks.write_docs(results_dir, docs_dir, sources=sources)
    except (doc_blocks.DocBlockError, OSError, ValueError) as exc:
        print(f"bench: docs not updated: {exc}", file=sys.stderr)
        return False
    shown = ", ".join(str(path) for path in changed) or "none changed"
    print(f"bench: docs tables rewritten from {results_dir}: {shown}")
    return True


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.write_docs:
        return 0 if _write_docs(Path(args.out_dir), Path(args.docs_dir)) else 1
    return Bench(args).run()
