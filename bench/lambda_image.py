"""The Lambda image's size and its cold start, measured without Docker.

    .venv/bin/python bench/lambda_image.py [--workdir DIR] [--runs 3] [--labels 500] [--pip-check]
        [--json OUT.json]

Size: the runtime stage's requirements (lambdas/requirements.txt) are resolved for the image's
platform (aarch64, the base's glibc and CPython: components.image_platforms), every resolved wheel is
downloaded once into the work directory and the uncompressed sizes of its files are summed: that is
what `pip install` puts in site-packages, before pip's .pyc files (their share is measured on the
x86_64 install below and printed separately). The embedder bundle is added beside it.
`--pip-check` also asks pip's own resolver and prints whether it picks the same packages.

Cold start: a fresh virtualenv holding exactly the runtime stage's packages (the same names and
versions, as x86_64 wheels for this machine's Python: Docker cannot run here), the handlers and
ontosearch laid out as in the image (/var/task, .pyc compiled as the image's build does), and the
bundle exported by this checkout. A real `chroma run` serves a CL collection (all CL terms, built with
build-snapshot's code) behind the real nginx auth proxy; S3 and Secrets Manager are a moto server.
Each run starts a new interpreter and times process start -> `lambdas.query.handler` returned for one
chunk of real cell-type labels (read from S3, embedded, queried through the proxy, part written to
S3). Printed: the whole, and the import / first-call phases the child reports.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from components import image_platforms as ip  # noqa: E402
from components.batch_workflow import LAMBDA_DOCKERFILE  # noqa: E402
from components.images import PLATFORM  # noqa: E402
from ontosearch.workflow.steps import DEFAULT_CHUNK_SIZE  # noqa: E402

SIZE_TARGET_MB = 700
MB = 1e6


def runtime_stage() -> tuple[ip.Stage, ip.Platform]:
    stage = next(s for s in ip.stages(REPO / LAMBDA_DOCKERFILE, REPO) if s.name == "runtime")
    return stage, ip.platform_of(stage, PLATFORM)


def runtime_stage_env() -> dict[str, str]:
    """The runtime stage's ENV instructions, as the image carries them into every function."""
    from dockerfile_parse import DockerfileParser

    env, stage = {}, None
    for instruction in DockerfileParser(str(REPO / LAMBDA_DOCKERFILE)).structure:
        if instruction["instruction"] == "FROM":
            stage = shlex.split(instruction["value"])[-1]
        elif instruction["instruction"] == "ENV" and stage == "runtime":
            for word in shlex.split(instruction["value"]):
                key, _, value = word.partition("=")
                env[key] = value
    return env


# What Lambda itself sets in a function's environment: the reserved and unreserved "defined runtime
# environment variables" (https://docs.aws.amazon.com/lambda/latest/dg/configuration-envvars.html).
# HOME is not one of them, and Lambda runs the image's process as a sandbox user of its own, which a
# Debian base has no /etc/passwd entry for: without HOME from the image, Python cannot find a home
# directory (Path.home() raises RuntimeError) and only /tmp is writable.
LAMBDA_DEFINED_ENV = {
    "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EXECUTION_ENV": "",
    "AWS_LAMBDA_FUNCTION_NAME": "batch-query-0123456", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "3008",
    "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST", "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
    "LANG": "en_US.UTF-8", "TZ": ":UTC", "PATH": "/usr/local/bin:/usr/bin/:/bin:/opt/bin",
}
# Run first in a child standing in for the function: the sandbox user has no passwd entry.
NO_PASSWD_ENTRY = r"""
import pwd
def _no_entry(uid):
    raise KeyError(f"getpwuid(): uid not found: {uid}")
pwd.getpwuid = _no_entry
"""


def lambda_env(image_env: dict[str, str], paths: dict[str, Path]) -> dict[str, str]:
    """A function's environment here: what Lambda defines, then the image's ENV, with the image's
    paths (/var/task, /opt/..., /tmp) mapped to local directories by `paths` (longest prefix first)."""
    def local(value: str) -> str:
        for image_path in sorted(paths, key=len, reverse=True):
            if value == image_path or value.startswith(image_path + "/"):
                return str(paths[image_path]) + value[len(image_path):]
        return value

    env = {**LAMBDA_DEFINED_ENV, "PATH": os.environ.get("PATH", LAMBDA_DEFINED_ENV["PATH"])}
    env.update({key: local(value) for key, value in image_env.items()})
    env["LAMBDA_TASK_ROOT"] = local("/var/task")
    return env


def _download(url: str, into: Path) -> Path:
    target = into / url.rsplit("/", 1)[-1]
    if not target.is_file():
        tmp = target.with_suffix(".part")
        with urllib.request.urlopen(url, timeout=300) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
        tmp.replace(target)
    return target


def installed_bytes(wheel: Path) -> int:
    """What installing a wheel writes: the uncompressed size of every file in it."""
    with zipfile.ZipFile(wheel) as archive:
        return sum(info.file_size for info in archive.infolist() if not info.is_dir())


def measure_size(workdir: Path, pip_check: bool) -> dict[str, Any]:
    stage, target = runtime_stage()
    started = time.perf_counter()
    resolution = ip.resolve([REPO / r for r in stage.requirements], target)
    if not resolution.ok:
        raise SystemExit(f"the runtime stage does not resolve for {target}:\n{resolution.message}")
    resolve_seconds = time.perf_counter() - started
    wheels_dir = workdir / "wheels-aarch64"
    wheels_dir.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(8) as pool:
        files = list(pool.map(lambda i: _download(i["url"], wheels_dir), resolution.installs))
    per_package = sorted(((i["name"], installed_bytes(f), f.stat().st_size)
                          for i, f in zip(resolution.installs, files, strict=True)), key=lambda x: -x[1])
    result: dict[str, Any] = {
        "platform": str(target),
        "requirements": list(stage.requirements),
        "packages": len(per_package),
        "installed_mb": round(sum(p[1] for p in per_package) / MB, 1),
        "download_mb": round(sum(p[2] for p in per_package) / MB, 1),
        "largest": [{"name": n, "installed_mb": round(b / MB, 1)} for n, b, _ in per_package[:8]],
        "resolve_seconds": round(resolve_seconds, 1),
        "pins": sorted(f"{i['name']}=={i['version']}" for i in resolution.installs),
    }
    if pip_check:
        started = time.perf_counter()
        by_pip = ip.pip_resolve([REPO / r for r in stage.requirements], target)
        ours = {(i["name"].lower().replace("_", "-"), i["version"]) for i in resolution.installs}
        theirs = {(i["name"].lower().replace("_", "-"), i["version"]) for i in by_pip.installs}
        result["pip_check"] = {"ok": by_pip.ok, "same_packages": by_pip.ok and ours == theirs,
                               "seconds": round(time.perf_counter() - started, 1),
                               "only_uv": sorted(map(str, ours - theirs)),
                               "only_pip": sorted(map(str, theirs - ours))}
    return result


# --- cold start ----------------------------------------------------------------------------------

def _run(command: list[str], **kwargs: Any) -> None:
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} ... failed:\n{done.stderr[-3000:]}")


def fresh_venv(workdir: Path, pins: list[str]) -> Path:
    """A new virtualenv with exactly `pins` (x86_64/this Python's wheels of the same versions)."""
    venv = workdir / "venv-runtime"
    if venv.exists():
        shutil.rmtree(venv)
    _run([sys.executable, "-m", "venv", str(venv)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k == "PIP_CERT"}
    env["PIP_CONFIG_FILE"] = os.devnull
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
          "--no-deps", "--only-binary=:all:", "--index-url", ip.PYPI_SIMPLE, *pins], env=env)
    _run([str(venv / "bin" / "python"), "-m", "pip", "check"], env=env)
    return venv


def image_layout(workdir: Path, revision: str | None) -> Path:
    """/var/task as the runtime stage lays it out: ontosearch/ and lambdas/*.py (of a commit, if given)."""
    task = workdir / "var-task"
    if task.exists():
        shutil.rmtree(task)
    task.mkdir(parents=True)
    if revision:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", revision, "ontosearch", "lambdas"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(task)], input=archive, check=True)
        for extra in (task / "lambdas").iterdir():
            if extra.suffix != ".py":
                extra.unlink()
        return task
    shutil.copytree(REPO / "ontosearch", task / "ontosearch",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (task / "lambdas").mkdir(parents=True)
    for handler in (REPO / "lambdas").glob("*.py"):
        shutil.copy2(handler, task / "lambdas" / handler.name)
    return task


CHILD = NO_PASSWD_ENTRY + r"""
import json, os, sys, time
started = float(os.environ["BENCH_PROCESS_START"])
entered = time.time()
from lambdas import query
imported = time.time()
event = json.loads(os.environ["BENCH_EVENT"])
query._embedder(event["job"]["embedder"])  # what the handler's first call does first, timed apart
embedder = time.time()
query._client(event["url"])  # token from Secrets Manager, checked read, HttpClient (cached per container)
client = time.time()
result = query.handler(event, None)
answered = time.time()
print(json.dumps({"interpreter_s": entered - started, "import_s": imported - entered,
                  "embedder_s": embedder - imported, "client_s": client - embedder,
                  "chunk_s": answered - client, "total_s": answered - started, "result": result}))
"""


def build_store(workdir: Path, terms: int | None = None) -> tuple[Path, str]:
    """A Chroma persist directory holding a CL collection (every term, or the first `terms`), and its
    embedder's name, built and restored with build-snapshot's and restore's own code."""
    from ontosearch.ontologies import Ontology, load_ontology
    from ontosearch.restore import restore_from_dir
    from ontosearch.snapshot_build import build_snapshot

    snapshot = workdir / f"snapshot-cl-{terms or 'all'}"
    data = workdir / "chroma-data"
    if not (snapshot / "manifest.json").is_file():
        cl = load_ontology("cl")
        ontology = Ontology("cl", cl.version, cl.terms[:terms]) if terms else cl
        build_snapshot([ontology], snapshot, progress=False, log=lambda _m: None)
    if data.exists():
        shutil.rmtree(data)
    manifest = restore_from_dir(snapshot, data, log=lambda _m: None)
    return data, manifest.embedder["name"]


def measure_cold_start(workdir: Path, pins: list[str], runs: int, labels: int,
                       revision: str | None = None, terms: int | None = None) -> dict[str, Any]:
    """Time `runs` fresh interpreters of the runtime venv answering one chunk; see the module text."""
    from moto.server import ThreadedMotoServer

    from ontosearch import constants as c
    from ontosearch.bench.annotation import make_labels
    from ontosearch.chroma_process import ChromaServer, free_port
    from ontosearch.embedder_bundle import export_bundle
    from ontosearch.embedders import ENV_EMBEDDER_BUNDLES
    from ontosearch.proxy import NginxProxy, generate_token
    from ontosearch.workflow.steps import chunk_key, split

    started = time.perf_counter()
    venv = fresh_venv(workdir, pins)
    venv_seconds = time.perf_counter() - started
    task = image_layout(workdir, revision)
    bundles = workdir / "embedders"
    if not (bundles / "all-MiniLM-L6-v2" / "bundle.json").is_file():
        export_bundle(None, bundles)
    python = str(venv / "bin" / "python")
    # As the runtime stage does: .pyc for /var/task (pip compiled site-packages; this Python's
    # standard library was compiled when it was installed, as the stage compiles the image's).
    _run([python, "-m", "compileall", "-q", str(task)])
    data, embedder = build_store(workdir, terms)

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    moto_port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
    moto.start()
    aws = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{moto_port}", "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    read_token, admin_token = generate_token(), generate_token()
    runs_out: list[dict[str, Any]] = []
    try:
        import boto3

        local = {"endpoint_url": aws["AWS_ENDPOINT_URL"], "region_name": "us-east-1",
                 "aws_access_key_id": "bench", "aws_secret_access_key": "bench"}
        s3 = boto3.client("s3", **local)
        secrets = boto3.client("secretsmanager", **local)
        bucket = "ontosearch-bench"
        s3.create_bucket(Bucket=bucket)
        secret_arn = secrets.create_secret(Name="bench-token", SecretString=read_token)["ARN"]
        execution = "bench-cold-start"
        # The chunk is written by the real Split step from a text file of distinct cell-type labels,
        # so it has the layout the query step reads whatever that layout becomes.
        text = "\n".join(make_labels(labels, duplicate_share=0.0, ontology="cl")) + "\n"
        s3.put_object(Bucket=bucket, Key="inputs/bench.txt", Body=text.encode())
        job = {"bucket": bucket, "input": f"s3://{bucket}/inputs/bench.txt", "key": "inputs/bench.txt",
               "format": "txt", "column": None, "ontology": "cl", "top_k": 3, "embedder": embedder,
               "snapshot": "bench", "save_snapshot": False, "chunk_size": labels}
        split(job, execution, s3)
        key = chunk_key(execution, 0)
        chunk_labels = len(s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode().strip().split("\n"))
        with ChromaServer(data) as chroma, NginxProxy(chroma.port, read_token, admin_token) as proxy:
            event = {"job": job, "chunk": {"index": 0, "key": key, "first": 0, "labels": chunk_labels},
                     "execution": execution, "url": proxy.url}
            # The function's environment: Lambda's own variables and the image's ENV (its paths
            # mapped here), no HOME but the image's, the sandbox user without a passwd entry (CHILD).
            image_env = runtime_stage_env()
            tmp = workdir / "lambda-tmp"
            tmp.mkdir(exist_ok=True)
            env = {**lambda_env(image_env, {"/var/task": task, image_env[ENV_EMBEDDER_BUNDLES]: bundles,
                                            "/tmp": tmp}),
                   **aws, c.ENV_TOKEN_SECRET_ARN: secret_arn, c.ENV_WORKFLOW_BUCKET: bucket,
                   "BENCH_EVENT": json.dumps(event)}
            for _ in range(runs):
                env["BENCH_PROCESS_START"] = repr(time.time())
                t0 = time.perf_counter()
                done = subprocess.run([python, "-c", CHILD], capture_output=True, text=True, env=env,
                                      cwd=task, timeout=300)
                wall = time.perf_counter() - t0
                if done.returncode != 0:
                    raise SystemExit(f"the query handler failed in the fresh venv:\n{done.stderr[-4000:]}")
                out = json.loads(done.stdout.strip().splitlines()[-1])
                out["wall_s"] = wall
                runs_out.append(out)
        part = s3.get_object(Bucket=bucket, Key=runs_out[0]["result"]["part"])["Body"].read().decode()
    finally:
        moto.stop()
    first = runs_out[0]["result"]
    return {
        "venv_seconds": round(venv_seconds, 1),
        "labels": labels, "labels_answered": first.get("labels"), "annotated": first.get("annotated"),
        "runs": [{k: round(v, 3) for k, v in r.items() if k.endswith("_s")} for r in runs_out],
        "best_total_s": round(min(r["total_s"] for r in runs_out), 3),
        "median_total_s": round(sorted(r["total_s"] for r in runs_out)[len(runs_out) // 2], 3),
        "part": first.get("part"),
        "part_text": part,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=None, help="kept for reuse (default: a temp dir)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--labels", type=int, default=DEFAULT_CHUNK_SIZE, help="distinct labels in the chunk")
    parser.add_argument("--pip-check", action="store_true", help="also resolve with pip and compare")
    parser.add_argument("--revision", default=None,
                        help="lay out the handlers of this commit (default: the working tree)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ontosearch-lambda-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    size = measure_size(workdir, args.pip_check)
    print(f"Lambda runtime stage ({size['platform']}): {size['packages']} packages, "
          f"{size['installed_mb']} MB installed (target <= {SIZE_TARGET_MB} MB), "
          f"{size['download_mb']} MB of wheels")
    for item in size["largest"]:
        print(f"  {item['name']:<28} {item['installed_mb']:>7.1f} MB")
    if "pip_check" in size:
        print(f"  pip's resolver: same packages = {size['pip_check']['same_packages']} "
              f"({size['pip_check']['seconds']} s)")
    cold = measure_cold_start(workdir, size["pins"], args.runs, args.labels, args.revision)
    bundle_mb = sum(f.stat().st_size for f in (workdir / "embedders").rglob("*") if f.is_file()) / MB
    site = next((workdir / "venv-runtime" / "lib").glob("python3*/site-packages"))
    on_disk = sum(f.stat().st_size for f in site.rglob("*") if f.is_file()) / MB
    pyc = sum(f.stat().st_size for f in site.rglob("*.pyc")) / MB
    print(f"  + embedder bundle {bundle_mb:.1f} MB; x86_64 venv site-packages {on_disk:.1f} MB on disk, "
          f"of which {pyc:.1f} MB .pyc")
    print(f"cold start, process start -> first chunk ({cold['labels']} labels) answered, fresh venv "
          f"(Python {platform.python_version()} {platform.machine()}), {args.runs} runs:")
    for i, run in enumerate(cold["runs"], 1):
        print(f"  run {i}: {run['total_s']:.2f} s to the answer (interpreter {run['interpreter_s']:.2f}, "
              f"imports {run['import_s']:.2f}, embedder {run['embedder_s']:.2f}, token + client "
              f"{run['client_s']:.2f}, the chunk {run['chunk_s']:.2f}); process exit at "
              f"{run['wall_s']:.2f} s")
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f} on {os.cpu_count()} cores")
    cold.pop("part_text")
    report = {"size": size, "bundle_mb": round(bundle_mb, 1), "x86_64_site_packages_mb": round(on_disk, 1),
              "x86_64_pyc_mb": round(pyc, 1), "cold_start": cold,
              "machine": {"python": platform.python_version(), "arch": platform.machine(),
                          "cores": os.cpu_count(), "load_before": load_before[0],
                          "load_after": load_after[0]},
              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
