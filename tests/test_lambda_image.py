"""The Lambda image as the stack builds and references it: its URI form, its build context, its layout."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from pulumi_harness import synth_with

from components.batch_workflow import LAMBDA_DOCKERFILE
from components.images import digest_uri
from ontosearch import constants, embedders

ROOT = Path(__file__).resolve().parent.parent
FUNCTION = "aws:lambda/function:Function"
# Lambda's ImageUri is an ECR image by tag or by digest, never both: "repo:tag@sha256:..." (what
# docker_build.Image.ref gives) is refused with "Source image ... is not valid"
# (https://github.com/pulumi/pulumi-docker-build/issues/571,
# https://docs.aws.amazon.com/lambda/latest/dg/images-create.html).
ECR_REPOSITORY = r"\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com/[a-z0-9][a-z0-9._/-]*"
TAG_OR_DIGEST = r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[0-9a-f]{64})"
LAMBDA_IMAGE_URI = re.compile(ECR_REPOSITORY + TAG_OR_DIGEST)


@pytest.fixture(scope="module")
def batch_stack():
    return synth_with("dev", {"ontosearch:batchWorkflow": True})


def test_lambdas_reference_the_built_image_by_repository_and_digest(batch_stack) -> None:
    repo = batch_stack.one("aws:ecr/repository:Repository", "batch-lambda")
    image = batch_stack.one("docker-build:index:Image", "batch-lambda")
    functions = batch_stack.of_type(FUNCTION)
    assert len(functions) == 5
    for function in functions:
        uri = function.raw_inputs["imageUri"]
        assert LAMBDA_IMAGE_URI.fullmatch(uri), f"{function.name}: {uri} is not a form Lambda accepts"
        # exactly this build: a rebuild (new digest) updates every function
        assert uri == f"{repo.state['repositoryUrl']}@{image.state['digest']}"


def test_digest_uri_refuses_what_lambda_refuses() -> None:
    url = "123456789012.dkr.ecr.us-east-1.amazonaws.com/batch-lambda"
    digest = "sha256:" + "a" * 64
    assert digest_uri(url, digest) == f"{url}@{digest}"
    with pytest.raises(ValueError, match="carries a tag"):
        digest_uri(url + ":latest", digest)
    with pytest.raises(ValueError, match="was the image pushed"):
        digest_uri(url, "")
    assert not LAMBDA_IMAGE_URI.fullmatch(f"{url}:latest@{digest}")


# --- build context ------------------------------------------------------------------------------

def _copy_sources(dockerfile: Path) -> list[str]:
    """Build-context paths the Dockerfile's COPY/ADD instructions read (not --from a stage)."""
    from dockerfile_parse import DockerfileParser

    sources = []
    for instruction in DockerfileParser(str(dockerfile)).structure:
        if instruction["instruction"] in {"COPY", "ADD"}:
            words = [w for w in shlex.split(instruction["value"]) if not w.startswith("--")]
            if any(w.startswith("--from") for w in shlex.split(instruction["value"])):
                continue
            sources += words[:-1]
    return sources


def _context_files(dockerfile: Path) -> set[str]:
    """What BuildKit sends: the context root filtered by <Dockerfile>.dockerignore, by Docker's rules.

    docker-py's `exclude_paths` implements the ignore-file rules of the Docker CLI
    (https://docs.docker.com/build/concepts/context/#dockerignore-files); BuildKit, and
    pulumi-docker-build when it hashes the context at every preview, prefer `<Dockerfile>.dockerignore`
    beside the Dockerfile (https://docs.docker.com/build/concepts/context/#filename-and-location,
    pulumi-docker-build provider/internal/context.go getIgnorePatterns).
    """
    from docker.utils.build import exclude_paths

    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    assert ignore.is_file(), f"{ignore.relative_to(ROOT)} is missing: the whole repository would be sent"
    patterns = [line.strip() for line in ignore.read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    return {p for p in exclude_paths(str(ROOT), patterns) if (ROOT / p).is_file()}


@pytest.fixture(scope="module")
def lambda_context() -> set[str]:
    return _context_files(ROOT / LAMBDA_DOCKERFILE)


def test_lambda_build_context_admits_every_file_the_dockerfile_copies(lambda_context) -> None:
    sources = _copy_sources(ROOT / LAMBDA_DOCKERFILE)
    assert sources
    for source in sources:
        matched = [p.relative_to(ROOT).as_posix() for p in ROOT.glob(source.rstrip("/"))]
        assert matched, f"COPY {source}: nothing in the repository"
        for path in matched:
            files = [path] if (ROOT / path).is_file() else [
                f.relative_to(ROOT).as_posix() for f in (ROOT / path).rglob("*")
                if f.is_file() and "__pycache__" not in f.parts]
            missing = [f for f in files if f not in lambda_context]
            assert not missing, f"COPY {source}: the ignore file drops {missing[:5]}"


def test_lambda_build_context_leaves_out_the_environment_history_and_tests(lambda_context) -> None:
    for prefix in (".venv/", ".git/", "tests/", "asl/", "bench/", "components/", "docker/", "node_modules/"):
        assert not [p for p in lambda_context if p.startswith(prefix)], prefix
    assert not [p for p in lambda_context if "__pycache__" in p or p.endswith(".pyc")]
    assert {"lambdas/query.py", "lambdas/requirements.txt", "ontosearch/embedders.py"} <= lambda_context


def test_project_image_context_has_its_own_ignore_file_too() -> None:
    context = _context_files(ROOT / "docker/Dockerfile")
    assert "docker/requirements.txt" in context and "ontosearch/restore.py" in context
    assert not [p for p in context if p.startswith((".venv/", ".git/", "tests/", "lambdas/"))]


# --- layout the code relies on -------------------------------------------------------------------

def _bench():
    import importlib.util

    spec = importlib.util.spec_from_file_location("lambda_image_bench", ROOT / "bench" / "lambda_image.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def _runtime_env() -> dict[str, str]:
    return _bench().runtime_stage_env()


def test_a_function_without_a_passwd_entry_finds_home_and_caches_under_tmp(tmp_path: Path) -> None:
    """Lambda defines no HOME and runs the image as a sandbox user the Debian base has no passwd
    entry for (bench/lambda_image.py LAMBDA_DEFINED_ENV, from the Lambda guide's environment
    variables page); only /tmp is writable. With just what Lambda and the image's ENV set, the query
    step's imports (chromadb's HTTP client reads the home directory on import) and its lexical-index
    cache work, and the cache lands under /tmp."""
    import subprocess
    import sys

    bench = _bench()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = bench.lambda_env(_runtime_env(), {"/var/task": ROOT, "/tmp": tmp})
    child = bench.NO_PASSWD_ENTRY + (
        "import chromadb, pathlib\n"
        "from lambdas import query  # noqa: F401\n"
        "from ontosearch.lexical import cache_directory\n"
        "d = cache_directory(); d.mkdir(parents=True, exist_ok=True); (d / 'probe').write_text('x')\n"
        "print(d)\n")
    done = subprocess.run([sys.executable, "-c", child], env=env, cwd=tmp, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert Path(done.stdout.strip().splitlines()[-1]).is_relative_to(tmp)
    # the rule this stands in for holds: without the image's HOME the same imports fail
    bare = {k: v for k, v in env.items() if k != "HOME"}
    done = subprocess.run([sys.executable, "-c", child], env=bare, cwd=tmp, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0 and "Could not determine home directory" in done.stderr


def test_runtime_stage_points_the_embedder_at_the_bundles_the_export_stage_wrote() -> None:
    text = (ROOT / LAMBDA_DOCKERFILE).read_text()
    bundles = _runtime_env()[embedders.ENV_EMBEDDER_BUNDLES]
    assert f"embedder-bundle export --into {bundles}" in text
    # a snapshot built with the int8 embedder is queried with its own bundle
    assert f"embedder-bundle export --embedder {constants.INT8_EMBEDDER} --into {bundles}" in text
    assert f"COPY --from=export {bundles} {bundles}" in text
    assert f"embedder-bundle check --into {bundles}" in text
    assert re.search(r'^ENTRYPOINT \["python", "-m", "awslambdaric"\]$', text, re.M)


# --- the runtime stage's packages run the query handler --------------------------------------------

@pytest.mark.slow
def test_query_handler_answers_a_chunk_with_exactly_the_runtime_stage_packages(tmp_path: Path) -> None:
    """A fresh venv holds the runtime stage's resolved packages and nothing else (their x86_64 wheels,
    same versions); the handlers laid out as in the image answer a real chunk through nginx from a real
    `chroma run`. A module the query path imports, even lazily, that the image lacks fails here."""
    import csv
    import io
    import json

    from components import image_platforms as ip
    from ontosearch.label_io import write_rows

    why = ip.pypi_reachable()
    if why:
        pytest.skip(f"the runtime venv is installed from PyPI: {why}")
    bench = _bench()
    stage, platform = bench.runtime_stage()
    resolution = ip.resolve([ROOT / r for r in stage.requirements], platform)
    assert resolution.ok, resolution.message
    pins = [f"{i['name']}=={i['version']}" for i in resolution.installs]
    header = io.StringIO()
    write_rows(header, [], ontology="cl")
    HEADER = header.getvalue()  # noqa: N806 - the results CSV's header line
    result = bench.measure_cold_start(tmp_path, pins, runs=1, labels=60, terms=80)
    assert result["labels_answered"] == 60 and result["annotated"] == 60
    blocks = [json.loads(line) for line in result["part_text"].splitlines() if line.strip()]
    assert len(blocks) == 60 and {b["kind"] for b in blocks} == {"annotated"}
    for block in blocks:  # each label's result lines, as annotate writes them
        (best, *_) = [r for r in csv.DictReader(io.StringIO(HEADER + block["text"])) if r["rank"] == "1"]
        assert best["term_id"].startswith("CL:") and not best["error"], block
