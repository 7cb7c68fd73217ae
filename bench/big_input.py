"""Peak memory of a 1,000,000-row label file streamed through annotate's reader and writer.

    python bench/big_input.py [--rows 1000000] [--format txt|csv|jsonl] [--json]
    python bench/big_input.py --annotate SNAPSHOT_DIR [--rows 1000000] [--distinct 400]

Writes a file of realistic labels (cell types, tissues, diseases as scientists write them, with
variants, blanks and broken rows mixed in), then streams it in a child process through
ontosearch.label_io.read_labels -> batches of BATCH labels -> ResultWriter, the path `annotate` and
the workflow's Split step use, and reports the child's peak RSS (ru_maxrss), rows/s and whether every
input row reached the output. The matching itself is left out (one synthetic match per label): what is
measured is that memory does not grow with the number of rows. A second, smaller run gives the
baseline, so the growth between the two sizes is printed too.

With --annotate the child is the real `python -m ontosearch annotate --snapshot SNAPSHOT_DIR` (embedder,
embedded Chroma, matching, atomic output): its peak RSS includes the model and the store. Labels then
come from a pool of --distinct texts, as in real files where the same cell types repeat, so the run
measures streaming rather than the embedder's speed.

Run it on an idle machine for the figure in docs/reliability-and-security.md;
tests/test_reliability_bigfile.py runs a smaller version and asserts the growth stays bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BATCH = 1000
LABELS = (
    "CD4+ T cells", "Tregs", "hepatocytes", "OPCs", "AT2 cells", "adipocytes", "B cells", "NK cells",
    "cardiomyocytes", "microglia", "left ventricle", "lung", "liver", "Crohn's disease", "NASH",
    "lung adenocarcinoma", "type 2 diabetes", "kidney cortex", "CD8-positive, alpha-beta T cell",
    "plasmacytoid dendritic cells", "smooth muscle cell", "endothelial cells of vascular tree",
)


def write_input(path: Path, rows: int, fmt: str, seed: int = 0, distinct: int = 997) -> None:
    """A label file of `rows` rows; about 1% blank or broken rows, like real exports."""
    rng = random.Random(seed)
    variants = max(1, distinct // len(LABELS))
    with open(path, "w", encoding="utf-8", newline="") as handle:
        if fmt == "csv":
            handle.write("label,sample\n")
        for i in range(rows):
            roll = rng.random()
            if roll < 0.005:
                label = ""
            elif roll < 0.01:
                label = "x" * 1500  # over the length limit: an error row
            else:
                label = f"{rng.choice(LABELS)} {i % variants}" if roll < 0.5 else rng.choice(LABELS)
            if fmt == "txt":
                handle.write(label + "\n")
            elif fmt == "csv":
                quoted = '"' + label.replace('"', '""') + '"'
                handle.write(f"{quoted},s{i % 50}\n")
            else:
                handle.write(json.dumps({"label": label}) + "\n")


def stream(input_path: str, fmt: str, output_path: str) -> dict:
    """The measured part: read lazily, handle batches, write results as they come."""
    from ontosearch.label_io import ResultWriter, read_labels

    started = time.monotonic()
    with open(output_path, "w", encoding="utf-8", newline="") as out:
        writer = ResultWriter(out, ontology="cl")
        batch: list[tuple[int, str | None, str | None]] = []

        def flush() -> None:
            unique = {label for _row, label, error in batch if error is None}
            matches = {label: [{"rank": 1, "term_id": "CL:0000000", "term_label": "cell", "score": 0.5}]
                       for label in unique}
            for row, label, error in batch:
                writer.write(row, label, error, [] if error else matches[label])
            batch.clear()

        for record in read_labels(input_path, fmt):
            batch.append(record)
            if len(batch) >= BATCH:
                flush()
        flush()
    return {"seconds": time.monotonic() - started, **writer.counts}


def measure(rows: int, fmt: str, work: Path) -> dict:
    """Run `stream` in a fresh child process; its peak RSS is the figure."""
    source = work / f"labels-{rows}.{fmt}"
    output = work / f"annotations-{rows}.csv"
    write_input(source, rows, fmt)
    child = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", str(source), fmt, str(output)],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    result = json.loads(child.stdout.strip().splitlines()[-1])
    with open(output, encoding="utf-8", newline="") as handle:
        import csv

        output_rows = sum(1 for _ in csv.reader(handle)) - 1
    result.update({
        "rows_in": rows,
        "output_rows": output_rows,
        "input_mb": round(source.stat().st_size / 2**20, 1),
        "rows_per_s": round(rows / result["seconds"]) if result["seconds"] else None,
    })
    source.unlink()
    output.unlink()
    return result


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM belongs to the process's own address space; ru_maxrss
    of a child can also count its parent's memory at fork time, before exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def measure_annotate(rows: int, fmt: str, work: Path, snapshot: Path, distinct: int) -> dict:
    """Run the real annotate command on a generated file; peak RSS from the child's own rusage."""
    import csv

    source = work / f"labels-{rows}.{fmt}"
    output = work / f"annotations-{rows}.csv"
    write_input(source, rows, fmt, distinct=distinct)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ONTOSEARCH_CACHE_DIR": str(work / "cache")}
    started = time.monotonic()
    with open(work / "annotate.out", "w+") as out_file, open(work / "annotate.err", "w+") as err_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "ontosearch", "annotate", "--input", str(source), "--ontology", "cl",
             "--output", str(output), "--snapshot", str(snapshot), "--quiet"],
            stdout=out_file, stderr=err_file, env=env, cwd=ROOT,
        )
        # wait4 (not Popen.wait) to get this child's own resource usage: its peak RSS.
        _pid, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        out_file.seek(0)
        err_file.seek(0)
        out, err = out_file.read(), err_file.read()
    seconds = time.monotonic() - started
    if process.returncode != 0:
        raise SystemExit(f"annotate failed ({process.returncode}): {err.strip()[-2000:]}")
    units = 0
    with open(output, encoding="utf-8", newline="") as handle:
        for line in csv.DictReader(handle):
            units += line["status"] != "ok" or line["rank"] == "1"
    peak = round(usage.ru_maxrss / 1024, 1)
    result = {"rows_in": rows, "rows": units, "seconds": round(seconds, 1), "summary": out.strip(),
              "input_mb": round(source.stat().st_size / 2**20, 1), "peak_rss_mb": peak,
              "rows_per_s": round(rows / seconds)}
    source.unlink()
    output.unlink()
    return result


def _child(argv: list[str]) -> int:
    source, fmt, output = argv
    result = stream(source, fmt, output)
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return _child(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--baseline-rows", type=int, default=10_000)
    parser.add_argument("--format", choices=("txt", "csv", "jsonl"), default="csv")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--annotate", type=Path, metavar="SNAPSHOT_DIR",
                        help="run the real annotate command against this snapshot (with a cl collection)")
    parser.add_argument("--distinct", type=int, default=400, help="distinct labels in --annotate mode")
    args = parser.parse_args(argv)
    if args.annotate is not None:
        return _annotate_main(args)
    with tempfile.TemporaryDirectory(prefix="ontosearch-big-input-") as work:
        baseline = measure(args.baseline_rows, args.format, Path(work))
        big = measure(args.rows, args.format, Path(work))
    summary = {
        "format": args.format,
        "rows": args.rows,
        "input_mb": big["input_mb"],
        "peak_rss_mb": big["peak_rss_mb"],
        "baseline_rows": args.baseline_rows,
        "baseline_peak_rss_mb": baseline["peak_rss_mb"],
        "growth_mb": round(big["peak_rss_mb"] - baseline["peak_rss_mb"], 1),
        "rows_per_s": big["rows_per_s"],
        "every_row_accounted_for": big["rows"] == args.rows
        and big["annotated"] + big["errors"] + big["no_match"] == args.rows,
        "output_rows": big["output_rows"],
        "errors": big["errors"],
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{args.rows:,} rows ({big['input_mb']} MB {args.format}): peak RSS {big['peak_rss_mb']} MB "
              f"(baseline {args.baseline_rows:,} rows: {baseline['peak_rss_mb']} MB, growth "
              f"{summary['growth_mb']} MB), {big['rows_per_s']:,} rows/s, {big['errors']:,} error rows, "
              f"every row accounted for: {summary['every_row_accounted_for']}")
    return 0 if summary["every_row_accounted_for"] else 1


def _annotate_main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="ontosearch-big-annotate-") as work:
        # First use fills the cache (snapshot restore, the embedder's ONNX export): not what is measured.
        measure_annotate(100, args.format, Path(work), args.annotate, args.distinct)
        baseline = measure_annotate(args.baseline_rows, args.format, Path(work), args.annotate, args.distinct)
        big = measure_annotate(args.rows, args.format, Path(work), args.annotate, args.distinct)
    summary = {
        "mode": "annotate", "format": args.format, "rows": args.rows, "distinct": args.distinct,
        "input_mb": big["input_mb"], "peak_rss_mb": big["peak_rss_mb"], "seconds": big["seconds"],
        "baseline_rows": args.baseline_rows, "baseline_peak_rss_mb": baseline["peak_rss_mb"],
        "growth_mb": round(big["peak_rss_mb"] - baseline["peak_rss_mb"], 1),
        "rows_per_s": big["rows_per_s"], "every_row_accounted_for": big["rows"] == args.rows,
        "annotate_summary": big["summary"],
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"annotate, {args.rows:,} rows ({big['input_mb']} MB {args.format}, {args.distinct} distinct "
              f"labels): peak RSS {big['peak_rss_mb']} MB (baseline {args.baseline_rows:,} rows: "
              f"{baseline['peak_rss_mb']} MB, growth {summary['growth_mb']} MB), {big['seconds']} s, "
              f"{big['rows_per_s']:,} rows/s, every row accounted for: {summary['every_row_accounted_for']}\n"
              f"  {big['summary']}")
    return 0 if summary["every_row_accounted_for"] else 1


if __name__ == "__main__":
    sys.exit(main())
