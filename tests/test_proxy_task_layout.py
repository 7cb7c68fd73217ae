"""The proxy as the task runs it: the container command renders PROXY_CONFIG with envsubst into conf.d,
inside the official nginx image's own nginx.conf (whose `main` log format records query strings and
Referer). Only the ports are moved off the task's fixed 8080/8000 so tests can run side by side.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ontosearch.chroma_process import ChromaServer, free_port
from ontosearch.constants import CHROMA_HOST, CHROMA_PORT, HEARTBEAT_PATH, PROXY_PORT, TOKEN_HEADER
from ontosearch.proxy import (
    PROXY_CONFIG_ENV,
    TASK_ACCESS_LOG,
    TASK_CONFIG_PATH,
    nginx_executable,
    task_proxy_command,
    task_proxy_config,
)

READ = "LayoutReadToken0123456789"
ADMIN = "LayoutAdminToken0123456789"
NGINX_RUN = "exec nginx -g 'daemon off;'"

# The http block of the official image's /etc/nginx/nginx.conf, with private paths.
IMAGE_NGINX_CONF = """\
{user}worker_processes 1;
error_log {root}/image-error.log notice;
pid {root}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    default_type application/octet-stream;
    log_format main '$remote_addr - $remote_user [$time_local] "$request" '
                    '$status $body_bytes_sent "$http_referer" '
                    '"$http_user_agent" "$http_x_forwarded_for"';
    access_log {root}/image-access.log main;
    sendfile on;
    keepalive_timeout 65;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy_temp;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    include {root}/conf.d/*.conf;
}}
"""


def _status(url: str, headers: dict[str, str] | None = None, method: str = "GET", body: bytes | None = None
            ) -> int:
    request = urllib.request.Request(url, headers=headers or {}, method=method, data=body)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.fixture
def image_layout(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    if shutil.which("envsubst") is None:
        pytest.skip("gettext's envsubst is not installed")
    root = tmp_path / "nginx"
    (root / "conf.d").mkdir(parents=True)
    proxy_port = free_port()
    with ChromaServer(tmp_path / "data") as chroma:
        config = (task_proxy_config()
                  .replace(f"0.0.0.0:{PROXY_PORT}", f"127.0.0.1:{proxy_port}")
                  .replace(f"{CHROMA_HOST}:{CHROMA_PORT}", f"{CHROMA_HOST}:{chroma.port}")
                  .replace(TASK_ACCESS_LOG, str(root / "proxy-access.log")))
        script = task_proxy_command()[2]
        assert TASK_CONFIG_PATH in script and script.endswith(NGINX_RUN)
        script = script.replace(TASK_CONFIG_PATH, str(root / "conf.d" / "default.conf")).replace(
            NGINX_RUN, f"exec {nginx_executable()} -p {root} -c {root}/nginx.conf -e {root}/image-error.log "
                       "-g 'daemon off;'")
        user = "user root root;\n" if os.geteuid() == 0 else ""
        (root / "nginx.conf").write_text(IMAGE_NGINX_CONF.format(root=root, user=user))
        env = {"PATH": os.environ["PATH"], PROXY_CONFIG_ENV: config, "CHROMA_TOKEN": READ,
               "CHROMA_ADMIN_TOKEN": ADMIN}
        process = subprocess.Popen(["sh", "-c", script], env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, start_new_session=True)
        url = f"http://127.0.0.1:{proxy_port}"
        try:
            deadline = time.monotonic() + 20
            while _status_or_none(url + HEARTBEAT_PATH) != 200:
                assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
                assert time.monotonic() < deadline, "nginx did not come up"
                time.sleep(0.05)
            yield url, root
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            try:
                os.killpg(process.pid, 9)
            except ProcessLookupError:
                pass


def _status_or_none(url: str) -> int | None:
    try:
        return _status(url)
    except OSError:
        return None


def test_task_command_runs_the_proxy_inside_the_image_layout(image_layout: tuple[str, Path]) -> None:
    url, root = image_layout
    collections = url + "/api/v2/tenants/default_tenant/databases/default_database/collections"
    assert _status(url + HEARTBEAT_PATH) == 200
    assert _status(collections) == 401
    assert _status(collections, {TOKEN_HEADER: READ}) == 200
    assert _status(collections, {"Authorization": f"Bearer {READ}"}) == 200
    create = b'{"name":"layout_test"}'
    json_type = {"Content-Type": "application/json"}
    assert _status(collections, {TOKEN_HEADER: READ, **json_type}, "POST", create) == 403
    assert _status(collections, {TOKEN_HEADER: ADMIN, **json_type}, "POST", create) == 200
    assert _status(url + f"/api/v2/version?t={READ}", {TOKEN_HEADER: READ, "Referer": f"x/{ADMIN}"}) == 400

    time.sleep(0.2)
    ours = (root / "proxy-access.log").read_text()
    assert "role=read" in ours and "role=admin" in ours
    # The image's `main` format (query strings, Referer) must never see our server's requests.
    assert (root / "image-access.log").read_text() == ""
    everything = "".join(p.read_text(errors="replace") for p in root.glob("*.log"))
    for token in (READ, ADMIN):
        assert token not in everything
