"""Split and Merge rows/s and peak RSS over a moto S3 server, at a chosen file size.

    python bench/workflow_scale.py [--rows 1000000] [--distinct 100000] [--top-k 3]
                                   [--chunk-size 500] [--profile split|merge] [--json]

A moto server runs in its own process (as S3 is another machine for the Lambdas). The input is a
.txt file of --rows rows drawn from --distinct labels (each distinct label appears, the rest are
drawn at random; 0.5% blank rows, which are error rows). Each step runs in a fresh child process
that calls the real ontosearch.workflow.steps function with a boto3 client, as the Lambda handler
does; the child reports the step's wall time and its peak RSS (VmHWM, interpreter and imports
included, and the peak before the step for comparison). The query step is not measured: between
Split and Merge the parts are written with --top-k synthetic matches a label, in the layout the
query step writes (steps.label_block), so Merge reads parts of the real size.

The child and the moto server share the machine's cores: the rate is the step's over a local S3,
with the server's request handling on the same machine. Report `uptime` load with the numbers.
--profile runs that step under cProfile and prints the top functions by internal time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BUCKET = "ontosearch-bench"
EXECUTION = "bench-scale"
KEY = "inputs/bench.txt"
WORDS = ("CD4+", "CD8+", "naive", "memory", "regulatory", "alveolar", "cortical", "epithelial",
         "T cell", "B cell", "macrophage", "hepatocyte", "fibroblast", "neuron", "astrocyte")

CHILD = r"""
import cProfile, io, json, os, pstats, resource, sys, time
import boto3
from ontosearch.workflow import steps
s3 = boto3.client("s3", endpoint_url=os.environ["BENCH_ENDPOINT"], region_name="us-east-1",
                  aws_access_key_id="bench", aws_secret_access_key="bench")
job = json.loads(os.environ["BENCH_JOB"])
step = os.environ["BENCH_STEP"]
def high_water_kb():
    # VmHWM: this process's own peak RSS. ru_maxrss is not: after fork and exec it starts at the
    # parent's RSS, so a child of a large process (pytest) would report the parent's size.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
before = high_water_kb()
execution = os.environ["BENCH_EXECUTION"]
run = lambda: getattr(steps, step)(job, execution, s3)  # noqa: E731
profile = cProfile.Profile() if os.environ.get("BENCH_PROFILE") == step else None
started = time.perf_counter()
if profile:
    profile.enable()
result = run()
if profile:
    profile.disable()
seconds = time.perf_counter() - started
if profile:
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats(os.environ.get("BENCH_SORT", "tottime")).print_stats(25)
    print(text.getvalue(), file=sys.stderr)
peak = high_water_kb()
print(json.dumps({"seconds": seconds, "peak_rss_mb": peak / 1024, "rss_before_mb": before / 1024,
                  "result": result}))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def label_text(i: int) -> str:
    return f"{WORDS[i % len(WORDS)]} {WORDS[(i // len(WORDS)) % len(WORDS)]} subtype {i}"


def write_input(path: Path, rows: int, distinct: int, seed: int = 0) -> int:
    """The input file; returns its size in bytes."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        lines = []
        for i in range(rows):
            if rng.random() < 0.005:
                lines.append("")
            else:
                lines.append(label_text(i if i < distinct else rng.randrange(distinct)))
            if len(lines) >= 100_000:
                handle.write("\n".join(lines) + "\n")
                lines.clear()
        if lines:
            handle.write("\n".join(lines) + "\n")
    return path.stat().st_size


def write_parts(s3, top_k: int) -> int:
    """Every chunk's part, with `top_k` synthetic matches a label; returns the bytes written."""
    from ontosearch.workflow import steps

    total = 0
    for chunk in steps.read_manifest(s3, BUCKET, steps.chunk_manifest_key(EXECUTION)):
        lines = []
        for entry in steps.read_chunk(s3, BUCKET, chunk["key"]):
            matches = [{"rank": r + 1, "term_id": f"CL:{entry['id'] * 7 + r:07d}",
                        "term_label": f"term {entry['id']} {r}", "score": 0.9 - 0.01 * r,
                        "match_type": "embedding", "confidence": "medium"} for r in range(top_k)]
            text, kind = steps.label_block(entry["label"], None, matches, "CL")
            lines.append(json.dumps({"id": entry["id"], "kind": kind, "text": text}, ensure_ascii=False))
        body = "".join(line + "\n" for line in lines).encode("utf-8")
        total += len(body)
        s3.put_object(Bucket=BUCKET, Key=steps.part_key(EXECUTION, int(chunk["index"])), Body=body,
                      Metadata={"labels": str(len(lines))})
    return total


def run_step(step: str, endpoint: str, job: dict, profile: str | None) -> dict:
    env = {**os.environ, "BENCH_ENDPOINT": endpoint, "BENCH_JOB": json.dumps(job), "BENCH_STEP": step,
           "BENCH_EXECUTION": EXECUTION, "BENCH_PROFILE": profile or "", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env,
                          cwd=ROOT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{step} failed:\n{done.stderr[-4000:]}")
    if profile == step:
        print(done.stderr, file=sys.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--distinct", type=int, default=100_000)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=500)
    parser.add_argument("--profile", choices=("split", "merge"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import boto3

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench")
        for _ in range(100):
            try:
                s3.create_bucket(Bucket=BUCKET)
                break
            except Exception:  # the server is still starting
                time.sleep(0.1)
        else:
            raise SystemExit("the moto server did not start")
        with tempfile.TemporaryDirectory(prefix="ontosearch-scale-") as tmp:
            path = Path(tmp) / "bench.txt"
            input_bytes = write_input(path, args.rows, args.distinct)
            s3.upload_file(str(path), BUCKET, KEY)
        job = {"bucket": BUCKET, "input": f"s3://{BUCKET}/{KEY}", "key": KEY, "format": "txt",
               "column": None, "ontology": "CL", "top_k": args.top_k, "snapshot": "bench",
               "embedder": "bench", "save_snapshot": False, "chunk_size": args.chunk_size}
        split = run_step("split", endpoint, job, args.profile)
        part_bytes = write_parts(s3, args.top_k)
        merge = run_step("merge", endpoint, job, args.profile)
        output = s3.head_object(Bucket=BUCKET, Key=f"results/{EXECUTION}/annotations.csv")["ContentLength"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    if merge["result"]["rows"] != args.rows:
        raise SystemExit(f"merge wrote {merge['result']['rows']} rows of {args.rows}")
    report = {
        "rows": args.rows, "distinct": split["result"]["labels"], "top_k": args.top_k,
        "chunks": split["result"]["chunks"], "input_bytes": input_bytes, "part_bytes": part_bytes,
        "output_bytes": output, "load": os.getloadavg()[0],
        "split": {"seconds": round(split["seconds"], 2), "rows_per_s": round(args.rows / split["seconds"]),
                  "peak_rss_mb": round(split["peak_rss_mb"], 1),
                  "rss_before_mb": round(split["rss_before_mb"], 1)},
        "merge": {"seconds": round(merge["seconds"], 2), "rows_per_s": round(args.rows / merge["seconds"]),
                  "peak_rss_mb": round(merge["peak_rss_mb"], 1),
                  "rss_before_mb": round(merge["rss_before_mb"], 1)},
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{args.rows:,} rows, {report['distinct']:,} distinct, top_k {args.top_k}, "
              f"{report['chunks']} chunks; input {input_bytes / 2**20:.1f} MiB, "
              f"output {output / 2**20:.1f} MiB; load {report['load']:.2f}")
        for step in ("split", "merge"):
            r = report[step]
            print(f"  {step}: {r['seconds']:.2f} s, {r['rows_per_s']:,} rows/s, peak RSS "
                  f"{r['peak_rss_mb']:.0f} MB ({r['rss_before_mb']:.0f} MB before the step)")
    return report


if __name__ == "__main__":
    main()
