"""The nginx auth proxy in front of Chroma: one config template, rendered for the task and for local runs.

Chroma 1.x has no server-side auth, so every deployment puts this proxy in front of it. The Fargate
task renders `auth_proxy.conf` with envsubst from Secrets Manager values; `serve`, the tests and the
benchmarks render the very same text here and run Debian's nginx with it, so what is tested is what
is deployed.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import signal
import string
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from ontosearch.constants import (
    CHROMA_HOST,
    CHROMA_PORT,
    ENV_ADMIN_TOKEN,
    ENV_TOKEN,
    PROXY_KEEPALIVE_TIMEOUT_SECONDS,
    PROXY_PORT,
    PROXY_UPSTREAM_TIMEOUT_SECONDS,
    TOKEN_MIN_LENGTH,
)

PROXY_CONFIG_ENV = "PROXY_CONFIG"
TEMPLATE_PATH = Path(__file__).with_name("auth_proxy.conf")
TASK_CONFIG_PATH = "/etc/nginx/conf.d/default.conf"
TASK_ACCESS_LOG = "/dev/stdout"
NGINX_EXECUTABLE = "/usr/sbin/nginx"
TOKEN_VARIABLES = (ENV_TOKEN, ENV_ADMIN_TOKEN)
# The only shell-format argument given to envsubst: nothing else in the template is touched.
ENVSUBST_FORMAT = " ".join("${" + name + "}" for name in TOKEN_VARIABLES)
TOKEN_ALPHABET = string.ascii_letters + string.digits
GENERATED_TOKEN_LENGTH = 40

_ENV_REFERENCE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_TOKEN_PATTERN = re.compile(r"[A-Za-z0-9]+")


class ProxyError(RuntimeError):
    """The auth proxy could not be configured or started, or it stopped working."""


def validate_token(token: str | None, name: str = ENV_TOKEN) -> str:
    """Refuse tokens the proxy cannot compare safely.

    The tokens are pasted into nginx regexes, so only letters and digits are allowed; an empty token
    would match a request without one.
    """
    if not token:
        raise ProxyError(f"{name} is empty; set it to a random alphanumeric string of at least "
                         f"{TOKEN_MIN_LENGTH} characters")
    if not _TOKEN_PATTERN.fullmatch(token):
        raise ProxyError(f"{name} may contain only letters and digits (A-Z, a-z, 0-9); "
                         "generate a new one, e.g. with ontosearch.proxy.generate_token()")
    if len(token) < TOKEN_MIN_LENGTH:
        raise ProxyError(f"{name} is {len(token)} characters long; use at least {TOKEN_MIN_LENGTH}")
    return token


def validate_token_pair(read_token: str, admin_token: str) -> None:
    validate_token(read_token, ENV_TOKEN)
    validate_token(admin_token, ENV_ADMIN_TOKEN)
    if read_token == admin_token:
        raise ProxyError(f"{ENV_TOKEN} and {ENV_ADMIN_TOKEN} are the same; the read token must not "
                         "allow writes, so give them different values")


def generate_token(length: int = GENERATED_TOKEN_LENGTH) -> str:
    """A random alphanumeric token (about 5.95 bits per character)."""
    return "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(length))


def envsubst(text: str, values: dict[str, str]) -> str:
    """Substitute like `envsubst 'SHELL-FORMAT'`: only the named variables, `$NAME` and `${NAME}`.

    Other `$references` (nginx variables) are left alone, as envsubst does when given a format.
    """

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return values[name] if name in values else match.group(0)

    return _ENV_REFERENCE.sub(replace, text)


def _template() -> str:
    return TEMPLATE_PATH.read_text(encoding="utf-8")


def _fill_addresses(listen: str, upstream: str, access_log: str) -> str:
    return (
        _template()
        .replace("@@LISTEN@@", listen)
        .replace("@@UPSTREAM@@", upstream)
        .replace("@@ACCESS_LOG@@", access_log)
        .replace("@@UPSTREAM_TIMEOUT@@", str(PROXY_UPSTREAM_TIMEOUT_SECONDS))
        .replace("@@KEEPALIVE_TIMEOUT@@", str(PROXY_KEEPALIVE_TIMEOUT_SECONDS))
    )


def render_proxy_config(
    listen_port: int,
    upstream_port: int,
    read_token: str,
    admin_token: str,
    listen_host: str = "0.0.0.0",
    upstream_host: str = CHROMA_HOST,
    access_log: str = TASK_ACCESS_LOG,
) -> str:
    """The http-context snippet (maps, log format, upstream, server) with real tokens filled in."""
    validate_token_pair(read_token, admin_token)
    text = _fill_addresses(f"{listen_host}:{int(listen_port)}", f"{upstream_host}:{int(upstream_port)}",
                           access_log)
    return envsubst(text, {ENV_TOKEN: read_token, ENV_ADMIN_TOKEN: admin_token})


def task_proxy_config() -> str:
    """The snippet for the task, with the token variables left for envsubst in the container."""
    return _fill_addresses(f"0.0.0.0:{PROXY_PORT}", f"{CHROMA_HOST}:{CHROMA_PORT}", TASK_ACCESS_LOG)


def task_proxy_command() -> list[str]:
    """Command of the nginx container: check the tokens, render the config, run nginx in the foreground.

    The official image's entrypoint passes any command other than `nginx` straight through, so its
    own template scripts do not run. A missing or malformed token stops the container (and with it
    the task) instead of starting a proxy that would let the wrong requests in.
    """
    checks = []
    for name in TOKEN_VARIABLES:
        checks.append(
            f'case "${{{name}:-}}" in ""|*[!A-Za-z0-9]*) '
            f'echo "auth proxy: {name} must be set to letters and digits only" >&2; exit 1;; esac; '
            f'if [ "${{#{name}}}" -lt {TOKEN_MIN_LENGTH} ]; then '
            f'echo "auth proxy: {name} must be at least {TOKEN_MIN_LENGTH} characters" >&2; exit 1; fi; '
        )
    script = (
        "set -eu; "
        + "".join(checks)
        + f'if [ "${ENV_TOKEN}" = "${ENV_ADMIN_TOKEN}" ]; then '
        f'echo "auth proxy: {ENV_TOKEN} and {ENV_ADMIN_TOKEN} must differ" >&2; exit 1; fi; '
        f'printf "%s\\n" "${PROXY_CONFIG_ENV}" | envsubst {shlex.quote(ENVSUBST_FORMAT)} '
        f"> {TASK_CONFIG_PATH}; "
        "exec nginx -g 'daemon off;'"
    )
    return ["sh", "-c", script]


def nginx_executable() -> str:
    if Path(NGINX_EXECUTABLE).exists():
        return NGINX_EXECUTABLE
    found = shutil.which("nginx")
    if found is None:
        raise ProxyError("nginx was not found; install it (Debian: apt-get install nginx-light)")
    return found


def _private_file(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # also when the file existed with other permissions
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


class NginxProxy:
    """A local nginx running the task's auth proxy config in front of a Chroma server.

    Everything nginx writes (config with the tokens, pid, temp files, logs) lives in a private 0700
    directory, removed on stop unless `keep_dir` is set or the directory was given by the caller.
    """

    def __init__(
        self,
        upstream_port: int,
        read_token: str,
        admin_token: str,
        port: int | None = None,
        host: str = CHROMA_HOST,
        upstream_host: str = CHROMA_HOST,
        workdir: str | os.PathLike[str] | None = None,
    ) -> None:
        from ontosearch.chroma_process import free_port

        validate_token_pair(read_token, admin_token)
        self.upstream_port = int(upstream_port)
        self.upstream_host = upstream_host
        self.host = host
        self.port = int(port) if port else free_port(host)
        self._read_token = read_token
        self._admin_token = admin_token
        self._given_dir = Path(workdir) if workdir is not None else None
        self.dir: Path | None = None
        self.process: subprocess.Popen | None = None
        self._stderr = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def access_log_path(self) -> Path:
        return self._require_dir() / "access.log"

    @property
    def error_log_path(self) -> Path:
        return self._require_dir() / "error.log"

    def _require_dir(self) -> Path:
        if self.dir is None:
            raise ProxyError("the proxy has not been started")
        return self.dir

    def full_config(self, directory: Path) -> str:
        """A complete nginx.conf: process settings and private paths around the task's snippet."""
        snippet = render_proxy_config(
            self.port, self.upstream_port, self._read_token, self._admin_token,
            listen_host=self.host, upstream_host=self.upstream_host,
            access_log=str(directory / "access.log"),
        )
        user = ""
        if os.geteuid() == 0:
            # Workers must reach the private 0700 directory; as root that means running them as root.
            user = "user root root;\n"
        return (
            f"{user}"
            "daemon off;\n"
            "worker_processes 1;\n"
            f"pid {directory / 'nginx.pid'};\n"
            f"error_log {directory / 'error.log'} warn;\n"
            "events { worker_connections 1024; }\n"
            "http {\n"
            f"    client_body_temp_path {directory / 'client_body'};\n"
            f"    proxy_temp_path {directory / 'proxy'};\n"
            f"    fastcgi_temp_path {directory / 'fastcgi'};\n"
            f"    uwsgi_temp_path {directory / 'uwsgi'};\n"
            f"    scgi_temp_path {directory / 'scgi'};\n"
            f"{snippet}\n"
            "}\n"
        )

    def start(self, timeout: float = 15.0) -> NginxProxy:
        if self.process is not None:
            return self
        if self._given_dir is not None:
            self._given_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self._given_dir, 0o700)
            self.dir = self._given_dir
        else:
            self.dir = Path(tempfile.mkdtemp(prefix="ontosearch-proxy-"))
        config_path = self.dir / "nginx.conf"
        _private_file(config_path, self.full_config(self.dir))
        for name in ("access.log", "error.log", "stderr.log"):
            _private_file(self.dir / name, "")
        self._stderr = open(self.dir / "stderr.log", "ab")  # noqa: SIM115 - closed in stop()
        command = [nginx_executable(), "-p", str(self.dir), "-c", str(config_path), "-e",
                   str(self.dir / "error.log")]
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=self._stderr, stderr=self._stderr,
            start_new_session=True,
        )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        """Wait until nginx itself answers (a path it refuses without asking Chroma)."""
        deadline = time.monotonic() + timeout
        probe = self.url + "/ontosearch-proxy-ready"
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise ProxyError(f"nginx exited with code {self.process.returncode} at start: "
                                 f"{self.startup_errors() or 'no message'}")
            try:
                with urllib.request.urlopen(probe, timeout=2):
                    return
            except urllib.error.HTTPError:
                return
            except (OSError, urllib.error.URLError):
                time.sleep(0.05)
        raise ProxyError(f"nginx did not answer on {self.url} within {timeout:.0f} s: "
                         f"{self.startup_errors() or 'no message'}")

    def startup_errors(self) -> str:
        """nginx's own complaints (bad config, port in use), for error messages."""
        if self.dir is None:
            return ""
        lines = []
        for name in ("stderr.log", "error.log"):
            path = self.dir / name
            if path.exists():
                lines += [line for line in path.read_text(errors="replace").splitlines()
                          if "[emerg]" in line or "[alert]" in line or "[crit]" in line]
        return "; ".join(lines[-3:])

    def logs(self) -> str:
        """Everything nginx logged so far (access, error and its own output)."""
        if self.dir is None:
            return ""
        parts = []
        for name in ("access.log", "error.log", "stderr.log"):
            path = self.dir / name
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "".join(parts)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0, keep_dir: bool = False) -> None:
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            # Workers outlive a master that was killed; they share its process group.
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        if self.dir is not None and self._given_dir is None and not keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> NginxProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
