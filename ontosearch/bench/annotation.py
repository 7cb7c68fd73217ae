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
from pathlib import Path
from typing import Any

from ontosearch.bench.child import run_in_child

LABELS = 10_000
DUPLICATE_SHARE = 0.30
_RATE = re.compile(r"([0-9][0-9,.]*)\s*labels/s")


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
    t0 = time.perf_counter()
    embedder.embed(unique)
    unique_s = time.perf_counter() - t0
    return {
        "embedder": embedder.spec(),
        "backend": type(embedder).__name__,
        "load_s": load_s,
        "unique_texts": len(unique),
        "unique_s": unique_s,
        "texts_per_s": len(unique) / unique_s,
        "rows_per_s": len(labels) / unique_s,
    }


def embedder_alone(labels: list[str], embedder_name: str | None = None) -> dict[str, Any]:
    value, _wall, peak = run_in_child(_embed_alone, labels, embedder_name)
    value["peak_rss_mb"] = peak
    return value


def run_with_peak(
    command: list[str], timeout: float = 1800.0, env: dict[str, str] | None = None
) -> tuple[int, float, float, str]:
    """Run `command`; (exit code, wall seconds, peak RSS in MB, combined output).

    The peak is the kernel's figure for the process and the children it waited for (wait4), so a
    command that indexes in a child or starts a server is measured at its largest process.
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
    return process.returncode, wall, usage.ru_maxrss / 1024.0, text


def _reported_rate(text: str) -> float | None:
    for line in reversed(text.splitlines()):
        found = _RATE.search(line)
        if found:
            return float(found.group(1).replace(",", ""))
    return None


def run_command(
    args: list[str], rows: int, timeout: float = 1800.0, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run `python -m ontosearch ARGS` to completion; wall time, peak RSS, exit code, reported rate."""
    code, wall, peak, text = run_with_peak([sys.executable, "-m", "ontosearch", *args], timeout, env)
    tail = text.strip().splitlines()[-4:]
    result = {
        "command": "python -m ontosearch " + " ".join(args),
        "exit_code": code,
        "wall_s": wall,
        "peak_rss_mb": peak,
        "rows": rows,
        "labels_per_s_wall": rows / wall,
        "labels_per_s_reported": _reported_rate(text),
        "output_tail": tail,
    }
    if code != 0:
        result["error"] = f"exit code {code}: {' | '.join(tail)[-600:]}"
    return result


def count_output_rows(path: str | Path) -> int:
    """Data rows of an annotations CSV (header excluded)."""
    import csv

    with open(path, newline="", encoding="utf-8") as handle:
        return max(0, sum(1 for _ in csv.reader(handle)) - 1)


def timed_build(ontologies: list[str], out_dir: str | Path, timeout: float = 1800.0) -> dict[str, Any]:
    """`build-snapshot` for the ontologies as the command users run; wall time and peak RSS."""
    args = ["build-snapshot", "--ontologies", ",".join(ontologies), "--out", str(out_dir)]
    code, wall, peak, text = run_with_peak([sys.executable, "-m", "ontosearch", *args], timeout)
    tail = text.strip().splitlines()[-4:]
    result = {
        "command": "python -m ontosearch " + " ".join(args),
        "exit_code": code,
        "wall_s": wall,
        "peak_rss_mb": peak,
        "output_tail": tail,
    }
    if code != 0:
        result["error"] = f"build-snapshot failed: {' | '.join(tail)[-600:]}"
    return result
