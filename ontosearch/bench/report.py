"""Targets, the Markdown report and the JSON file of one benchmark run.

Each target of issue 5 is a ratio or a per-item cost measured in the same run, so a busy machine
moves both sides of a ratio alike. A target whose inputs were not measured (a skipped section) is
listed as "n/a" with the reason, never silently dropped.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

PASS, MISS, NA = "PASS", "MISS", "n/a"

# Accuracy targets of issue 5 (top-1) per ontology: real-world labels and systematic variants.
REAL_WORLD_TARGETS = {"cl": 0.90, "uberon": 0.97, "mondo": 0.97}
VARIANT_TARGET = 0.98
# The held-out sets of real-world labels in bench/data/ (see bench/accuracy.py for how each was made).
REAL_WORLD_SETS = (
    "realworld", "realworld2", "realworld3", "realworld4", "realworld4-new", "realworld5", "realworld5-new"
)
# Blind sets of labels as atlases, references and portals publish them (issue 12), each measured once on
# the shipped matcher. Kept apart from REAL_WORLD_SETS: they are another register of label (not what
# scientists type), so they neither define the "-new" parts of the real-world sets nor feed the pooled
# confidence calibration; their per-class precision is a held-out check of that calibration instead.
PUBLISHED_SETS = ("published", "published2", "published3", "published4")
PUBLISHED_TARGET = 0.95  # issue 12: top-1 at least 0.95 for every ontology
ACCURACY_TARGETS = {
    **{(name, held_out): goal for held_out in REAL_WORLD_SETS for name, goal in REAL_WORLD_TARGETS.items()},
    **{(name, held_out): PUBLISHED_TARGET for held_out in PUBLISHED_SETS for name in REAL_WORLD_TARGETS},
    **{(name, "variants"): VARIANT_TARGET for name in REAL_WORLD_TARGETS},
}


def _target(
    section: str, name: str, goal: str, measured: float | None, ok: bool | None, detail: str = ""
) -> dict[str, Any]:
    status = (
        NA
        if ok is None or measured is None or (isinstance(measured, float) and math.isnan(measured))
        else (PASS if ok else MISS)
    )
    return {
        "section": section,
        "target": name,
        "goal": goal,
        "measured": measured,
        "status": status,
        "detail": detail,
    }


def _run(dataset: dict[str, Any], path: str, concurrency: int) -> dict[str, Any] | None:
    for run in dataset["runs"]:
        if run["path"] == path and run["concurrency"] == concurrency:
            return run
    return None


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    targets: list[dict[str, Any]] = []
    for dataset in results.get("query", []):
        tag = dataset["dataset"]
        worst = None
        worst_at = None
        for run in dataset["runs"]:
            if run["path"] != "proxy":
                continue
            direct = _run(dataset, "direct", run["concurrency"])
            if direct and direct["qps"] > 0:
                ratio = run["qps"] / direct["qps"]
                if worst is None or ratio < worst:
                    worst, worst_at = ratio, run["concurrency"]
        targets.append(
            _target(
                "query",
                f"proxy QPS / direct QPS, worst concurrency ({tag})",
                ">= 0.90",
                worst,
                None if worst is None else worst >= 0.9,
                f"worst at {worst_at} clients" if worst_at else "",
            )
        )
        if dataset.get("seed_scale"):
            single = _run(dataset, "proxy", 1)
            p99 = single["p99_ms"] if single else None
            targets.append(
                _target(
                    "query",
                    f"proxy single-query p99 ms ({tag})",
                    "<= 10 ms",
                    p99,
                    None if p99 is None else p99 <= 10.0,
                )
            )
        batched = dataset.get("batched", {})
        if "proxy" in batched and "in-process" in batched:
            ratio = batched["proxy"]["per_label_ms"] / batched["in-process"]["per_label_ms"]
            targets.append(
                _target(
                    "query",
                    f"batched per-label cost proxy / in-process ({tag})",
                    "<= 1.20",
                    ratio,
                    ratio <= 1.2,
                    f"{batched['proxy']['per_label_ms']:.3f} vs "
                    f"{batched['in-process']['per_label_ms']:.3f} ms per label, batches of "
                    f"{batched['proxy']['batch']}",
                )
            )
        recall = dataset.get("recall_at_10")
        targets.append(
            _target(
                "query",
                f"recall@10 HNSW vs exact ({tag})",
                ">= 0.98",
                recall,
                None if recall is None else recall >= 0.98,
                f"{dataset.get('recall_queries')} queries, {dataset.get('hnsw', '')}",
            )
        )
    cold = results.get("cold_start", {})
    for run in cold.get("runs", []):
        if run.get("seed_scale"):
            targets.append(
                _target(
                    "cold start",
                    f"archive to first query through proxy, s ({run['snapshot']})",
                    "<= 5 s",
                    run.get("total_s"),
                    run.get("total_s") is not None and run["total_s"] <= 5.0,
                )
            )
        ratio = run.get("archive_ratio")
        targets.append(
            _target(
                "cold start",
                f"archive / persist dir ({run['snapshot']}, {run.get('compression')})",
                "<= 0.60",
                ratio,
                None if ratio is None else ratio <= 0.6,
            )
        )
    annotation = results.get("annotation", {})
    for key, label in (("annotate", "annotate end to end"), ("workflow", "workflow execution")):
        entry = annotation.get(key)
        if entry and "error" not in entry:
            rate = entry.get("labels_per_s_reported") or entry.get("labels_per_s_wall")
            targets.append(
                _target(
                    "annotation",
                    f"{label}, labels/s",
                    ">= 1000",
                    rate,
                    rate >= 1000,
                    f"wall clock incl. start-up: {entry['labels_per_s_wall']:.0f} labels/s",
                )
            )
        elif key == "annotate":
            targets.append(
                _target(
                    "annotation",
                    f"{label}, labels/s",
                    ">= 1000",
                    None,
                    None,
                    (entry or {}).get("error", "not measured"),
                )
            )
    build = results.get("snapshot_build")
    if build:
        wall = build.get("wall_s") if "error" not in build else None
        targets.append(
            _target(
                "annotation",
                "snapshot build, three ontologies, s",
                "<= 300 s",
                wall,
                None if wall is None else wall <= 300,
                f"peak RSS {build['peak_rss_mb']:.0f} MB"
                if build.get("peak_rss_mb")
                else build.get("error", ""),
            )
        )
    for row in results.get("accuracy", {}).get("rows", []):
        goal = ACCURACY_TARGETS.get((row["ontology"], row["set"]))
        if goal is not None:
            targets.append(
                _target(
                    "accuracy",
                    f"top-1 {row['ontology']} {row['set']}",
                    f">= {goal:.2f}",
                    row["top1"],
                    row["top1"] >= goal,
                    f"n={row['n']}, top-5 {row['top5']:.3f}",
                )
            )
    return targets


def _build_note(build: dict[str, Any]) -> str:
    if not build.get("note"):
        return ""
    load = build.get("load_before")
    shown = "/".join(f"{x:.1f}" for x in load) if isinstance(load, (list, tuple)) else "unknown"
    return f" ({build['note']}; load average then {shown})"


def _short(command: str) -> str:
    """A command line without the run's temporary directories."""
    return re.sub(r"(/[^\s/]+)*/([^\s/]+)", r"\2", command)


def fmt(value: Any, digits: int = 2) -> str:
    """A number as the tables show it: thousands separated, fixed digits, "-" for what was not measured."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.{digits}f}"
    return str(value)


def run_lines(meta: dict[str, Any]) -> list[str]:
    """When, where and under what load the run was made: every number of the run depends on it."""
    return [
        f"Run {meta['started']} to {meta['finished']} ({meta['elapsed_s']:.0f} s) on {meta['machine']}.",
        f"Conditions: {meta['conditions']}",
    ]


def targets_lines(targets: list[dict[str, Any]]) -> list[str]:
    out = [
        "| section | target | goal | measured | status | detail |",
        "|---|---|---|---:|---|---|",
    ]
    for t in targets:
        out.append(
            f"| {t['section']} | {t['target']} | {t['goal']} | {fmt(t['measured'], 3)} | "
            f"**{t['status']}** | {t['detail']} |"
        )
    return out


def cold_start_lines(cold: dict[str, Any]) -> list[str]:
    out = [
        "| snapshot | archive MB | persist MB | restore s | chroma s | proxy s | "
        "first query s | total s | trials | serve ready s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for run in cold.get("runs", []):
        ph = run.get("phases", {})
        out.append(
            f"| {run['snapshot']} ({run.get('compression')}) | {fmt(run.get('archive_mb'), 1)} | "
            f"{fmt(run.get('persist_mb'), 1)} | {fmt(ph.get('restore_s'))} | "
            f"{fmt(ph.get('chroma_start_s'))} | {fmt(ph.get('proxy_start_s'))} | "
            f"{fmt(ph.get('first_query_s'))} | **{fmt(run.get('total_s'))}** | "
            f"{', '.join(fmt(t) for t in run.get('trials', []))} | {fmt(run.get('serve_ready_s'))} |"
        )
    for name, rows in cold.get("compression", {}).items():
        out += [
            "",
            f"Archive size per compression ({name}):",
            "",
            "| compression | persist MB | archive MB | archive / persist | pack s | unpack s |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for row in rows:
            out.append(
                f"| {row['compression']} | {fmt(row['persist_mb'], 1)} | {fmt(row['archive_mb'], 1)} | "
                f"{fmt(row['ratio'], 3)} | {fmt(row['pack_s'])} | {fmt(row['unpack_s'])} |"
                f"{' ' + row['note'] if row.get('note') else ''}"
            )
    for name, estimate in cold.get("fargate", {}).items():
        out += ["", f"Fargate cold-start estimate ({name}): {estimate['arithmetic']}."]
    return out


def annotation_lines(annotation: dict[str, Any]) -> list[str]:
    out = [
        f"{annotation.get('rows', 0):,} labels, {annotation.get('unique', 0):,} distinct "
        f"({annotation.get('duplicate_share', 0):.0%} duplicates), "
        f"ontology {annotation.get('ontology')}.",
        "",
        "| what | wall s | labels/s (wall) | labels/s (reported) | labels per CPU-s | peak RSS MB "
        "| status |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    alone = annotation.get("embedder_alone")
    if alone and "error" not in alone:
        out.append(
            f"| embedder alone ({alone['embedder']['name']}, {alone['backend']}; "
            f"{alone['unique_texts']} distinct texts) | {fmt(alone['unique_s'])} | "
            f"{fmt(alone['texts_per_s'], 0)} texts/s | {fmt(alone['rows_per_s'], 0)} rows/s | "
            f"{fmt(alone.get('texts_per_cpu_s'), 0)} texts | "
            f"{fmt(alone.get('peak_rss_mb'), 0)} | ok (model load {fmt(alone['load_s'])} s) |"
        )
    for key in ("annotate", "workflow"):
        entry = annotation.get(key)
        if entry:
            out.append(
                f"| `{_short(entry.get('command', key))}` | {fmt(entry.get('wall_s'))} | "
                f"{fmt(entry.get('labels_per_s_wall'), 0)} | "
                f"{fmt(entry.get('labels_per_s_reported'), 0)} | "
                f"{fmt(entry.get('labels_per_cpu_s'), 0)} | "
                f"{fmt(entry.get('peak_rss_mb'), 0)} | {entry.get('error', 'ok')} |"
            )
    out += [
        "",
        "labels per CPU-s: rows divided by the CPU seconds of the process and its children; on an "
        "otherwise idle 2-core machine the wall-clock rate can approach twice that.",
        "",
        "labels/s (reported): the command's own figure. For `annotate`, its matching loop (without "
        "restoring the snapshot and loading the model); for `workflow`, the execution from start to "
        "end state, including the task's start and stop but not the local set-up around it (moto, "
        "publishing the snapshot to the local bucket, which on AWS happens once per snapshot).",
    ]
    return out


def build_line(build: dict[str, Any]) -> str:
    return (
        f"`{_short(str(build.get('command')))}`: {fmt(build.get('wall_s'), 1)} s wall, "
        f"{fmt(build.get('cpu_s'), 0)} CPU-s, peak RSS {fmt(build.get('peak_rss_mb'), 0)} MB"
        f"{'; ' + build['error'] if 'error' in build else ''}"
        f"{_build_note(build)}."
    )


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    out = [f"# ontosearch benchmark{' (quick)' if meta.get('quick') else ''}", ""]
    out += run_lines(meta)
    out.append("")
    out += ["## Targets", "", *targets_lines(results.get("targets", []))]
    for dataset in results.get("query", []):
        out += [
            "",
            f"## Query path: {dataset['dataset']}",
            "",
            f"{dataset['vectors']:,} vectors x {dataset['dimensions']}, "
            f"collection `{dataset['collection']}`; {dataset['queries']} distinct queries, top-10; "
            f"Chroma RSS {fmt(dataset.get('chroma_rss_mb'), 0)} MB; "
            f"HNSW {dataset.get('hnsw', '')}.",
            "",
            "| path | clients | QPS | p50 ms | p90 ms | p99 ms | max ms | requests | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for run in sorted(dataset["runs"], key=lambda r: (r["path"], r["concurrency"])):
            out.append(
                f"| {run['path']} | {run['concurrency']} | {fmt(run['qps'], 1)} | {fmt(run['p50_ms'])} | "
                f"{fmt(run['p90_ms'])} | {fmt(run['p99_ms'])} | {fmt(run['max_ms'])} | "
                f"{run['requests']} | {run['errors']} |"
            )
        out += [
            "",
            "| batched (one request, best of the repeats) | batch | best request ms | median request ms "
            "| per label ms | labels/s |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for path, b in dataset.get("batched", {}).items():
            out.append(
                f"| {path} | {b['batch']} | {fmt(b.get('best_request_ms'), 1)} | "
                f"{fmt(b['median_request_ms'], 1)} | {fmt(b['per_label_ms'], 3)} "
                f"| {fmt(b['labels_per_s'], 0)} |"
            )
        out += [
            "",
            f"recall@10 (HNSW through the proxy vs exact numpy, {dataset.get('recall_queries')} queries): "
            f"**{fmt(dataset.get('recall_at_10'), 4)}**",
        ]
    cold = results.get("cold_start")
    if cold:
        out += ["", "## Cold start", "", *cold_start_lines(cold)]
    annotation = results.get("annotation")
    if annotation:
        out += ["", "## Annotation throughput", "", *annotation_lines(annotation)]
    build = results.get("snapshot_build")
    if build:
        out += ["", "## Snapshot build", "", build_line(build)]
    accuracy = results.get("accuracy")
    if accuracy and accuracy.get("rows"):
        out += [
            "",
            "## Accuracy (shipped matcher on the snapshot's collections)",
            "",
            "| ontology | set | n | top-1 | top-5 |",
            "|---|---|---:|---:|---:|",
        ]
        for row in accuracy["rows"]:
            out.append(
                f"| {row['ontology']} | {row['set']} | {row['n']} | {row['top1']:.3f} | {row['top5']:.3f} |"
            )
    cost = results.get("cost")
    if cost and "error" not in cost:
        out += ["", "## Cost", "", "```", cost.get("text", "").rstrip(), "```"]
    if results.get("errors"):
        out += ["", "## Sections that failed", ""]
        out += [f"- {name}: {message}" for name, message in results["errors"].items()]
    return "\n".join(out) + "\n"


def _clean(value: Any) -> Any:
    """JSON without NaN (which is not JSON) and without the raw latency lists."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return _clean(value.item())
    return value


def write(results: dict[str, Any], out_dir: str | Path, stem: str) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{stem}.json"
    md_path = out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(_clean(results), indent=2) + "\n", encoding="utf-8")
    md_path.write_text(markdown(results), encoding="utf-8")
    return {"json": json_path, "markdown": md_path}
