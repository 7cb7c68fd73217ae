"""Section 3: annotation throughput on 10,000 labels with 30% duplicates, and the snapshot build.

The labels are cell-type names as a big single-cell study would hold them: ontology labels and
synonyms rewritten the way people write them (plurals, case, a "cells" suffix), then 30% of the
rows repeated. `annotate` and `workflow` run as the commands users run (subprocesses, timed from
start to exit, plus the rate each command reports itself); the embedder alone runs in a child.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ontosearch.bench.child import run_in_child

LABELS = 10_000
DUPLICATE_SHARE = 0.30
_RATE = re.compile(r"([0-9][0-9,.]*)\s*labels/s")
_EXECUTION_SECONDS = re.compile(r'^\s*"seconds": ([0-9.]+),?$', re.MULTILINE)


def make_labels(
    n: int = LABELS, duplicate_share: float = DUPLICATE_SHARE, ontology: str = "cl", seed: int = 5
) -> list[str]:
    """`n` labels of which `duplicate_share` repeat an earlier one, in a shuffled order."""
    from ontosearch.ontologies import load_ontology

    rng = random.Random(seed)
    texts: list[str] = []
    for term in load_ontology(ontology).terms:
        texts.append(term.label)
        texts.extend(term.synonyms)
    rewrites = (
        lambda t: t,
        lambda t: t.capitalize(),
        lambda t: t + "s" if not t.endswith("s") else t,
        lambda t: t.upper() if len(t) < 12 else t.title(),
        lambda t: t.replace(" cell", "") + " cells" if t.endswith(" cell") else t + " population",
    )
    unique_target = n - int(round(n * duplicate_share))
    seen: set[str] = set()
    unique: list[str] = []
    while len(unique) < unique_target:
        text = rng.choice(rewrites)(rng.choice(texts))
        if text not in seen and 0 < len(text) <= 200:
            seen.add(text)
            unique.append(text)
    rows = unique + [rng.choice(unique) for _ in range(n - len(unique))]
    rng.shuffle(rows)
    return rows


def write_labels(path: str | Path, labels: list[str]) -> Path:
    path = Path(path)
    path.write_text("\n".join(labels) + "\n", encoding="utf-8")
    return path


def _embed_alone(labels: list[str], embedder_name: str | None) -> dict[str, Any]:
    """Child-process body: load the default embedder, then time it on the labels."""
    from ontosearch.embedders import get_embedder

    t0 = time.perf_counter()
    embedder = get_embedder(embedder_name)
    embedder.embed(["warm up"])
    load_s = time.perf_counter() - t0
    unique = list(dict.fromkeys(labels))
    cpu0 = _cpu_seconds()
    t0 = time.perf_counter()
    embedder.embed(unique)
    unique_s = time.perf_counter() - t0
    cpu_s = _cpu_seconds() - cpu0
    return {
        "embedder": embedder.spec(),
        "backend": type(embedder).__name__,
        "load_s": load_s,
        "unique_texts": len(unique),
        "unique_s": unique_s,
        "texts_per_s": len(unique) / unique_s,
        "rows_per_s": len(labels) / unique_s,
        "cpu_s": cpu_s,
        "texts_per_cpu_s": len(unique) / cpu_s if cpu_s > 0 else None,
    }


def _cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def embedder_alone(labels: list[str], embedder_name: str | None = None) -> dict[str, Any]:
    value, _wall, peak = run_in_child(_embed_alone, labels, embedder_name)
    value["peak_rss_mb"] = peak
    return value


@dataclass
class Finished:
    exit_code: int
    wall_s: float
    peak_rss_mb: float
    cpu_s: float  # user + system seconds of the process and the children it waited for
    output: str


def run_with_peak(command: list[str], timeout: float = 1800.0, env: dict[str, str] | None = None) -> Finished:
    """Run `command` to completion and collect the kernel's accounting of it.

    wait4 reports the process together with the children it waited for, so a command that indexes
    in a child or starts a server is measured at its largest process and with all its CPU time.
    """
    import tempfile

    with tempfile.TemporaryFile(mode="w+") as output:
        t0 = time.perf_counter()
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}
        )
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                process.kill()
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        process.returncode = os.waitstatus_to_exitcode(status)
        output.seek(0)
        text = output.read()
    return Finished(process.returncode, wall, usage.ru_maxrss / 1024.0, usage.ru_utime + usage.ru_stime, text)


def _reported_rate(text: str, rows: int) -> float | None:
    """The command's own rate: `annotate`'s "N labels/s", or rows over the `workflow` execution's
    "seconds" (without the local set-up around it: moto, publishing the snapshot)."""
    for line in reversed(text.splitlines()):
        found = _RATE.search(line)
        if found:
            return float(found.group(1).replace(",", ""))
    seconds = _EXECUTION_SECONDS.findall(text)
    if seconds and float(seconds[-1]) > 0:
        return rows / float(seconds[-1])
    return None


def run_command(
    args: list[str], rows: int, timeout: float = 1800.0, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run `python -m ontosearch ARGS` to completion; wall time, CPU, peak RSS, exit code, reported rate."""
    done = run_with_peak([sys.executable, "-m", "ontosearch", *args], timeout, env)
    tail = done.output.strip().splitlines()[-4:]
    result = {
        "command": "python -m ontosearch " + " ".join(args),
        "exit_code": done.exit_code,
        "wall_s": done.wall_s,
        "cpu_s": done.cpu_s,
        "peak_rss_mb": done.peak_rss_mb,
        "rows": rows,
        "labels_per_s_wall": rows / done.wall_s,
        "labels_per_cpu_s": rows / done.cpu_s if done.cpu_s > 0 else None,
        "labels_per_s_reported": _reported_rate(done.output, rows),
        "output_tail": tail,
    }
    if done.exit_code != 0:
        result["error"] = f"exit code {done.exit_code}: {' | '.join(tail)[-600:]}"
    return result


def count_output_rows(path: str | Path) -> int:
    """Data rows of an annotations CSV (header excluded)."""
    import csv

    with open(path, newline="", encoding="utf-8") as handle:
        return max(0, sum(1 for _ in csv.reader(handle)) - 1)


def timed_build(ontologies: list[str], out_dir: str | Path, timeout: float = 3600.0) -> dict[str, Any]:
    """`build-snapshot` for the ontologies as the command users run; wall time, CPU and peak RSS."""
    args = ["build-snapshot", "--ontologies", ",".join(ontologies), "--out", str(out_dir)]
    done = run_with_peak([sys.executable, "-m", "ontosearch", *args], timeout)
    tail = done.output.strip().splitlines()[-4:]
    result = {
        "command": "python -m ontosearch " + " ".join(args),
        "exit_code": done.exit_code,
        "wall_s": done.wall_s,
        "cpu_s": done.cpu_s,
        "peak_rss_mb": done.peak_rss_mb,
        "output_tail": tail,
    }
    if done.exit_code != 0:
        result["error"] = f"build-snapshot failed: {' | '.join(tail)[-600:]}"
    return result
