"""Where each image the stack builds runs, and whether its Python requirements install there.

A compiled wheel runs only on its CPU, on a glibc at least as new as its manylinux tag says
(`manylinux_2_Y` needs glibc >= 2.Y, PEP 600: https://peps.python.org/pep-0600/) and on its Python.
Docker cannot run here, so the check resolves each stage's requirements file from PyPI for the
stage's platform (binary wheels only, that CPU, manylinux tags up to that glibc, that CPython) as the
stage's `pip install` would, without installing anything (`resolve`).

What is resolved comes from the Dockerfiles themselves: every stage that runs `pip install -r FILE`
names the requirements file it copied in, and its base image is looked up in `BASE_IMAGES`, the
table of what each base runs (with where that is documented). A base not in the table is an error,
not a guess. Used by tests/test_image_platform.py and bench/lambda_image.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PYPI_SIMPLE = "https://pypi.org/simple"
# The oldest glibc any manylinux tag names (manylinux2014 = manylinux_2_17, PEP 599/600).
OLDEST_MANYLINUX_GLIBC = 17
# Docker platform -> the machine name wheels and markers use.
ARCHITECTURES = {"linux/arm64": "aarch64", "linux/amd64": "x86_64"}


@dataclass(frozen=True)
class BaseImage:
    """What a base image runs: its C library and its Python, and where both are stated."""

    glibc: tuple[int, int]
    python: tuple[int, int]
    source: str


BASE_IMAGES: dict[str, BaseImage] = {
    # Debian 13 "trixie" ships libc6 2.41 (https://packages.debian.org/trixie/libc6); the image is
    # debian:trixie-slim plus CPython 3.11 built from source
    # (https://github.com/docker-library/python/blob/master/3.11/slim-trixie/Dockerfile).
    "python:3.11-slim-trixie": BaseImage(
        glibc=(2, 41), python=(3, 11),
        source="https://packages.debian.org/trixie/libc6; "
               "https://github.com/docker-library/python/blob/master/3.11/slim-trixie/Dockerfile"),
    # AWS's Lambda bases (https://docs.aws.amazon.com/lambda/latest/dg/python-image.html): 3.8-3.11 are
    # Amazon Linux 2 (glibc 2.26), 3.12 and later Amazon Linux 2023 (glibc 2.34:
    # https://docs.aws.amazon.com/linux/al2023/ug/core-glibc.html). Listed so an image that moves to
    # one of them is checked too.
    "public.ecr.aws/lambda/python:3.11": BaseImage(
        glibc=(2, 26), python=(3, 11),
        source="https://docs.aws.amazon.com/lambda/latest/dg/python-image.html (Amazon Linux 2); "
               "https://docs.aws.amazon.com/linux/al2023/ug/compare-with-al2.html"),
    "public.ecr.aws/lambda/python:3.12": BaseImage(
        glibc=(2, 34), python=(3, 12),
        source="https://docs.aws.amazon.com/lambda/latest/dg/python-image.html (Amazon Linux 2023); "
               "https://docs.aws.amazon.com/linux/al2023/ug/core-glibc.html"),
}


class ImagePlatformError(ValueError):
    """A Dockerfile cannot be checked (unknown base, pip install without a requirements file...)."""


@dataclass(frozen=True)
class Stage:
    """One build stage of a Dockerfile and the requirements files its `pip install -r` reads."""

    dockerfile: str
    name: str
    base: str
    requirements: tuple[str, ...]  # paths in the build context


@dataclass(frozen=True)
class Platform:
    machine: str  # "aarch64"
    glibc: tuple[int, int]
    python: tuple[int, int]

    def pip_options(self) -> list[str]:
        """pip's target options: every manylinux tag this glibc accepts, the CPython version and ABI."""
        options: list[str] = []
        for minor in range(self.glibc[1], OLDEST_MANYLINUX_GLIBC - 1, -1):
            options += ["--platform", f"manylinux_2_{minor}_{self.machine}"]
        # The legacy alias of manylinux_2_17 (PEP 599); some wheels carry only this tag.
        options += ["--platform", f"manylinux2014_{self.machine}"]
        version = f"{self.python[0]}{self.python[1]}"
        return options + ["--python-version", f"{self.python[0]}.{self.python[1]}",
                          "--implementation", "cp", "--abi", f"cp{version}"]

    def __str__(self) -> str:
        return (f"{self.machine}, glibc {self.glibc[0]}.{self.glibc[1]}, "
                f"CPython {self.python[0]}.{self.python[1]}")


def _substitute(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text)


def _strip_flags(words: list[str]) -> tuple[dict[str, str], list[str]]:
    flags, rest = {}, []
    for word in words:
        if word.startswith("--") and not rest:
            key, _, value = word[2:].partition("=")
            flags[key] = value
        else:
            rest.append(word)
    return flags, rest


def _pip_installs(command: str) -> list[list[str]]:
    """The requirements files (`-r`) of each `pip install` a RUN command makes, one list per call."""
    calls = []
    for part in re.split(r"&&|;|\|\|", command):
        words = shlex.split(part, comments=False)
        while words and words[0] in {"python", "python3", "-m"}:
            words = words[1:]
        if len(words) < 2 or words[0] not in {"pip", "pip3"} or words[1] != "install":
            continue
        files = []
        for i, word in enumerate(words):
            if word in {"-r", "--requirement"} and i + 1 < len(words):
                files.append(words[i + 1])
            elif word.startswith("--requirement="):
                files.append(word.split("=", 1)[1])
            elif word.startswith("-r") and len(word) > 2:
                files.append(word[2:])
        calls.append(files)
    return calls


def stages(dockerfile: Path, root: Path) -> list[Stage]:
    """The build stages of a Dockerfile with their base image and the requirements files they install.

    A `pip install` that reads no requirements file copied from the build context cannot be checked
    (the packages would live in the Dockerfile's shell), so it is an error here.
    """
    from dockerfile_parse import DockerfileParser

    relative = dockerfile.resolve().relative_to(root.resolve()).as_posix()
    parser = DockerfileParser(str(dockerfile))
    global_args: dict[str, str] = {}
    found: list[Stage] = []
    current: dict[str, Any] | None = None

    def close() -> None:
        if current is not None:
            found.append(Stage(relative, current["name"], current["base"], tuple(current["requirements"])))

    for instruction in parser.structure:
        kind, value = instruction["instruction"], instruction["value"]
        if kind == "ARG" and current is None:
            name, _, default = value.partition("=")
            global_args[name.strip()] = default.strip().strip('"')
        elif kind == "FROM":
            close()
            _, words = _strip_flags(shlex.split(value))
            base = _substitute(words[0], global_args)
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else str(len(found))
            current = {"name": name, "base": base, "copies": {}, "requirements": []}
        elif kind in {"COPY", "ADD"} and current is not None:
            flags, words = _strip_flags(shlex.split(value))
            if "from" in flags or len(words) < 2:
                continue
            *sources, target = words
            for source in sources:
                inside = target if len(sources) == 1 and not target.endswith("/") else \
                    target.rstrip("/") + "/" + Path(source).name
                current["copies"][inside] = source
        elif kind == "RUN" and current is not None:
            calls = _pip_installs(value)
            if any(not files for files in calls):
                raise ImagePlatformError(
                    f"{relative} stage {current['name']}: `pip install` without `-r FILE`; install from a "
                    "requirements file copied from the build context, so its platform can be checked")
            for path in (path for files in calls for path in files):
                source = current["copies"].get(path)
                if source is None:
                    raise ImagePlatformError(
                        f"{relative} stage {current['name']}: `pip install -r {path}` reads a file no COPY "
                        "of that stage put there; COPY the requirements file from the build context")
                current["requirements"].append(source)
    close()
    return found


def platform_of(stage: Stage, docker_platform: str) -> Platform:
    """The platform a stage's packages must install on, from the image's platform and the base table."""
    base = BASE_IMAGES.get(stage.base)
    if base is None:
        raise ImagePlatformError(
            f"{stage.dockerfile} stage {stage.name} starts from {stage.base}, which BASE_IMAGES does not "
            "list; add its glibc and Python there with the page that states them")
    machine = ARCHITECTURES.get(docker_platform)
    if machine is None:
        raise ImagePlatformError(
            f"unknown image platform {docker_platform!r}; known: {', '.join(ARCHITECTURES)}")
    return Platform(machine, base.glibc, base.python)


# The manylinux targets uv's `--python-platform` offers for a CPU (uv 0.13.9: manylinux2014 = 2_17,
# then 2_28 and 2_31 ... 2_40). A base's glibc maps to the newest of these it satisfies; between two
# of them the check is stricter than the base, never looser.
UV_MANYLINUX_MINORS = (17, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40)


def uv_target(platform: Platform) -> str:
    """uv's `--python-platform` value for a platform: the newest manylinux target its glibc satisfies."""
    usable = [m for m in UV_MANYLINUX_MINORS if m <= platform.glibc[1]]
    if platform.glibc[0] != 2 or not usable:
        raise ImagePlatformError(f"glibc {platform.glibc} is older than any manylinux tag")
    return f"{platform.machine}-manylinux_2_{usable[-1]}"


_UV_LOCK = threading.Lock()
_UV: list[str] = []


def uv_binary() -> str:
    """The uv executable of the `uv` package, looked up once (its lookup reads sysconfig, whose first
    use is not thread-safe: concurrent resolutions could see a half-filled configuration)."""
    with _UV_LOCK:
        if not _UV:
            from uv import find_uv_bin

            _UV.append(find_uv_bin())
        return _UV[0]


@dataclass
class Resolution:
    ok: bool
    # name, version, wheel (file name), url, size (compressed bytes) of every package resolved
    installs: list[dict[str, Any]]
    message: str


def resolve(requirements: Sequence[Path], platform: Platform, timeout: float = 240.0,
            index_url: str = PYPI_SIMPLE) -> Resolution:
    """Resolve requirements files for a platform from PyPI, binary wheels only, into exact wheels.

    The resolver is uv's pip interface (`uv pip compile --python-platform ... --python-version ...
    --only-binary :all:`), which reads each wheel's metadata with ranged requests in parallel and
    evaluates environment markers for the target. pip's `install --dry-run --platform ... --abi ...`
    resolves the same packages (checked for every stage here: identical sets), but reads the metadata
    by downloading whole wheels when the index has no PEP 658 metadata (3.5 GB of CUDA wheels for the
    export stage, 46-70 s here) and evaluates markers on the machine it runs on, not the target.
    The machine's pip/uv configuration is ignored, as a Docker build ignores it; the cache is a
    temporary directory removed afterwards.
    """
    import tomllib

    with tempfile.TemporaryDirectory(prefix="ontosearch-resolve-") as tmp:
        lock = Path(tmp) / "pylock.toml"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "PIP_"))}
        env["UV_NO_CONFIG"] = "1"
        command = [uv_binary(), "pip", "compile", "--quiet", "--no-config", "--no-progress",
                   "--cache-dir", str(Path(tmp) / "cache"), "--index-url", index_url,
                   "--python-platform", uv_target(platform),
                   "--python-version", f"{platform.python[0]}.{platform.python[1]}",
                   "--only-binary", ":all:", "--format", "pylock.toml", "-o", str(lock),
                   *(str(path) for path in requirements)]
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
        if done.returncode != 0 or not lock.is_file():
            lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
            return Resolution(False, [], "\n".join(lines[-15:]))
        installs = []
        for package in tomllib.loads(lock.read_text()).get("packages", []):
            wheels = [(w["url"].rsplit("/", 1)[-1], w) for w in package["wheels"]]
            # The lock lists every wheel the platform accepts; pip installs a compiled one before a
            # pure-Python one (tag priority), so that is the one that counts.
            wheels.sort(key=lambda item: item[0].endswith("-none-any.whl"))
            name, wheel = wheels[0]
            installs.append({"name": package["name"], "version": package["version"], "wheel": name,
                             "url": wheel["url"], "size": int(wheel.get("size", 0))})
        return Resolution(True, installs, "")


def wheel_suits(wheel: str, platform: Platform) -> bool:
    """Whether a wheel's platform tags allow this CPU and glibc (pure-Python wheels always do)."""
    tags = wheel[:-len(".whl")].split("-")[-1].split(".")
    if tags == ["any"]:
        return True
    for tag in tags:
        legacy = {"manylinux2014": 17, "manylinux2010": 12, "manylinux1": 5}
        m = re.fullmatch(r"manylinux_(\d+)_(\d+)_(\w+)", tag)
        if m:
            glibc, machine = (int(m.group(1)), int(m.group(2))), m.group(3)
        else:
            name, _, machine = tag.partition("_")
            if name not in legacy:
                continue
            glibc = (2, legacy[name])
        if machine == platform.machine and glibc <= platform.glibc:
            return True
    return False


# pip evaluates environment markers (`platform_machine == "x86_64"`, `python_version < "3.12"`) on the
# machine it runs on, whatever --platform says; this launcher makes them describe the target.
_PIP_LAUNCHER = (
    "import platform, runpy, sys\n"
    "machine, version = sys.argv.pop(1), sys.argv.pop(1)\n"
    "platform.machine = lambda: machine\n"
    "if not platform.python_version().startswith(version + '.'):\n"
    "    platform.python_version = lambda: version + '.0'\n"
    "    platform.python_version_tuple = lambda: tuple((version + '.0').split('.'))\n"
    "sys.argv[0] = 'pip'\n"
    "runpy.run_module('pip', run_name='__main__', alter_sys=True)\n"
)


def pip_resolve(requirements: Sequence[Path], platform: Platform, timeout: float = 900.0,
                index_url: str = PYPI_SIMPLE) -> Resolution:
    """The same question asked of pip (`install --dry-run --report --platform ... --abi ...`): slow, a
    cross-check of `resolve` (bench/lambda_image.py --pip-check), not what the tests run."""
    with tempfile.TemporaryDirectory(prefix="ontosearch-pip-resolve-") as tmp:
        report = Path(tmp) / "report.json"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("PIP_") or k in {"PIP_CERT", "PIP_DEFAULT_TIMEOUT"}}
        env.update(PIP_CONFIG_FILE=os.devnull, PIP_CACHE_DIR=str(Path(tmp) / "cache"),
                   PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
        command = [sys.executable, "-c", _PIP_LAUNCHER, platform.machine,
                   f"{platform.python[0]}.{platform.python[1]}", "install", "--dry-run", "--ignore-installed",
                   "--quiet", "--report", str(report), "--target", str(Path(tmp) / "target"),
                   "--only-binary=:all:", "--index-url", index_url, *platform.pip_options()]
        for path in requirements:
            command += ["-r", str(path)]
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
        if done.returncode != 0 or not report.is_file():
            lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
            return Resolution(False, [], "\n".join(lines[-15:]))
        installs = [{"name": i["metadata"]["name"], "version": i["metadata"]["version"],
                     "wheel": i["download_info"]["url"].rsplit("/", 1)[-1], "url": i["download_info"]["url"],
                     "size": 0} for i in json.loads(report.read_text()).get("install", [])]
        return Resolution(True, installs, "")


def pypi_reachable(index_url: str = PYPI_SIMPLE, timeout: float = 10.0) -> str | None:
    """None when the index answers; otherwise why not (the platform check is skipped then)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(index_url.rstrip("/") + "/pip/", timeout=timeout) as response:
            response.read(1)
        return None
    except (urllib.error.URLError, OSError) as exc:
        return f"{index_url} is unreachable ({exc})"
