"""The auth proxy's config: one template, rendered identically by envsubst in the task and by Python here."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ontosearch.constants import CHROMA_HOST, CHROMA_PORT, PROXY_PORT, TOKEN_MIN_LENGTH
from ontosearch.proxy import (
    ENVSUBST_FORMAT,
    PROXY_CONFIG_ENV,
    TASK_CONFIG_PATH,
    NginxProxy,
    ProxyError,
    envsubst,
    generate_token,
    nginx_executable,
    render_proxy_config,
    task_proxy_command,
    task_proxy_config,
    validate_token,
)

READ = "ReadToken0123456789abcdef"
ADMIN = "AdminToken0123456789ABCDEF"
NGINX_RUN = "exec nginx -g 'daemon off;'"


def test_task_config_leaves_only_the_token_variables_for_envsubst() -> None:
    config = task_proxy_config()
    assert "@@" not in config
    assert f"listen 0.0.0.0:{PROXY_PORT} default_server;" in config
    assert f"server {CHROMA_HOST}:{CHROMA_PORT};" in config
    references = set(re.findall(r"\$\{(\w+)\}", config))
    assert references == {"CHROMA_TOKEN", "CHROMA_ADMIN_TOKEN"}


@pytest.mark.skipif(shutil.which("envsubst") is None, reason="gettext's envsubst is not installed")
def test_python_rendering_equals_envsubst_in_the_task() -> None:
    env = {"PATH": os.environ["PATH"], "CHROMA_TOKEN": READ, "CHROMA_ADMIN_TOKEN": ADMIN, "OTHER": "x"}
    rendered = subprocess.run(["envsubst", ENVSUBST_FORMAT], input=task_proxy_config(), env=env,
                              capture_output=True, text=True, check=True).stdout
    assert rendered == render_proxy_config(PROXY_PORT, CHROMA_PORT, READ, ADMIN)
    assert "$uri" in rendered and "$request_method" in rendered  # nginx variables untouched


def test_envsubst_twin_replaces_only_named_variables_in_both_forms() -> None:
    text = "a ${CHROMA_TOKEN} b $CHROMA_TOKEN c $CHROMA_TOKENX d ${HOME} e $uri f ${CHROMA_TOKEN"
    expected = "a T b T c $CHROMA_TOKENX d ${HOME} e $uri f ${CHROMA_TOKEN"
    assert envsubst(text, {"CHROMA_TOKEN": "T"}) == expected


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        ("", "empty"),
        ("short1", f"at least {TOKEN_MIN_LENGTH}"),
        ("has space in the middle 123", "letters and digits"),
        ("dollar$sign0123456789", "letters and digits"),
        ("regex.*0123456789abcd", "letters and digits"),
        ("ünïcödé0123456789abcd", "letters and digits"),
    ],
)
def test_tokens_that_could_not_be_compared_safely_are_refused(token: str, problem: str) -> None:
    with pytest.raises(ProxyError, match=re.escape(problem)):
        validate_token(token)


def test_read_and_admin_tokens_must_differ() -> None:
    with pytest.raises(ProxyError, match="must not allow writes"):
        render_proxy_config(8080, 8000, READ, READ)


def test_generated_tokens_are_long_random_and_alphanumeric() -> None:
    tokens = {generate_token() for _ in range(50)}
    assert len(tokens) == 50
    assert all(re.fullmatch(r"[A-Za-z0-9]{40}", t) for t in tokens)


def _run_task_command(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, Path]:
    """Run the container command with its config path moved into tmp_path and nginx replaced by `true`."""
    command = task_proxy_command()
    assert command[:2] == ["sh", "-c"]
    script = command[2]
    assert TASK_CONFIG_PATH in script and script.endswith(NGINX_RUN)
    target = tmp_path / "default.conf"
    script = script.replace(TASK_CONFIG_PATH, str(target)).replace(NGINX_RUN, "exit 0")
    full_env = {"PATH": os.environ["PATH"], PROXY_CONFIG_ENV: task_proxy_config(), **env}
    result = subprocess.run(["sh", "-c", script], env=full_env, capture_output=True, text=True, timeout=30)
    return result, target


@pytest.mark.skipif(shutil.which("envsubst") is None, reason="gettext's envsubst is not installed")
def test_task_command_renders_the_same_config(tmp_path: Path) -> None:
    result, target = _run_task_command(tmp_path, {"CHROMA_TOKEN": READ, "CHROMA_ADMIN_TOKEN": ADMIN})
    assert result.returncode == 0, result.stderr
    assert target.read_text() == render_proxy_config(PROXY_PORT, CHROMA_PORT, READ, ADMIN) + "\n"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CHROMA_ADMIN_TOKEN": ADMIN}, "CHROMA_TOKEN must be set"),
        ({"CHROMA_TOKEN": "", "CHROMA_ADMIN_TOKEN": ADMIN}, "CHROMA_TOKEN must be set"),
        ({"CHROMA_TOKEN": READ}, "CHROMA_ADMIN_TOKEN must be set"),
        ({"CHROMA_TOKEN": "abc def ghi jkl mno", "CHROMA_ADMIN_TOKEN": ADMIN}, "letters and digits"),
        ({"CHROMA_TOKEN": "x}|.*0123456789abcdef", "CHROMA_ADMIN_TOKEN": ADMIN}, "letters and digits"),
        ({"CHROMA_TOKEN": "abc123", "CHROMA_ADMIN_TOKEN": ADMIN}, f"at least {TOKEN_MIN_LENGTH}"),
        ({"CHROMA_TOKEN": ADMIN, "CHROMA_ADMIN_TOKEN": ADMIN}, "must differ"),
    ],
)
def test_task_command_stops_the_container_on_a_bad_token(tmp_path: Path, env: dict[str, str],
                                                          message: str) -> None:
    result, target = _run_task_command(tmp_path, env)
    assert result.returncode != 0
    assert message in result.stderr
    assert not target.exists()
    for value in env.values():
        if value:
            assert value not in result.stderr


def test_full_local_config_passes_nginx_syntax_check(tmp_path: Path) -> None:
    proxy = NginxProxy(upstream_port=8000, read_token=READ, admin_token=ADMIN, port=18080)
    config = tmp_path / "nginx.conf"
    config.write_text(proxy.full_config(tmp_path))
    result = subprocess.run([nginx_executable(), "-t", "-p", str(tmp_path), "-c", str(config),
                             "-e", str(tmp_path / "error.log")], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr


def test_local_proxy_files_are_private(tmp_path: Path) -> None:
    from ontosearch.chroma_process import free_port

    workdir = tmp_path / "proxy"
    # The upstream need not exist for nginx to start; nothing is proxied in this test.
    with NginxProxy(free_port(), READ, ADMIN, workdir=workdir) as proxy:
        assert proxy.alive()
        assert (workdir.stat().st_mode & 0o777) == 0o700
        for name in ("nginx.conf", "access.log", "error.log"):
            assert ((workdir / name).stat().st_mode & 0o777) == 0o600, name
    assert proxy.process is None


def test_proxy_start_failure_names_the_cause(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind((CHROMA_HOST, 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proxy = NginxProxy(8000, READ, ADMIN, port=port, workdir=tmp_path / "p")
        with pytest.raises(ProxyError, match="Address already in use"):
            proxy.start(timeout=10)
    assert not proxy.alive()
