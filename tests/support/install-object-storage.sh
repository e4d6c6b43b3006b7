#!/usr/bin/env bash
# Install the object-storage servers used by tests/integration/test_object_storage.py.
#
# Usage: tests/support/install-object-storage.sh [VENV]   (VENV defaults to .venv, relative to the
# repository root unless absolute)
#
#   - npm: azurite (version pinned in tests/support/node/package.json + package-lock.json) into
#     tests/support/node/node_modules
#   - pip: moto[server], gunicorn, boto3, gcp-storage-emulator into VENV
#
# Idempotent: each half is skipped when what it installs is already present (about 1 s then).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${1:-.venv}"
case "$venv" in /*) ;; *) venv="$root/$venv" ;; esac
python="$venv/bin/python"
if [[ ! -x "$python" ]]; then
  echo "install-object-storage: no python at $python (pass the virtualenv as \$1)" >&2
  exit 2
fi

# Keep in sync with the test extra in pyproject.toml.
pip_requirements=(
  "moto[server]>=5.1"          # S3 API (moto.moto_server.werkzeug_app)
  "gunicorn>=27"               # serves moto with TLS (tested: 27.0.1; we pass --control-socket)
  "boto3>=1.34"                # creates the S3 bucket
  "gcp-storage-emulator>=2026.7.19"  # GCS API (HTTP only, fronted by tests/support/tls_proxy.py)
)

start=$SECONDS

# --- Python packages -------------------------------------------------------------------------
if "$python" - "${pip_requirements[@]}" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version

from packaging.requirements import Requirement

for spec in sys.argv[1:]:
    req = Requirement(spec)
    try:
        if not req.specifier.contains(version(req.name), prereleases=True):
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
for extra in ("werkzeug", "flask_cors"):  # what moto[server] adds
    try:
        version(extra.replace("_", "-"))
    except PackageNotFoundError:
        sys.exit(1)
PY
then
  echo "install-object-storage: pip packages already installed"
else
  echo "install-object-storage: pip install ${pip_requirements[*]}"
  "$python" -m pip install --quiet --disable-pip-version-check "${pip_requirements[@]}"
fi

# --- azurite (npm) ---------------------------------------------------------------------------
wanted="$(sed -n 's/.*"azurite": *"\([^"]*\)".*/\1/p' "$here/node/package.json")"
installed=""
if [[ -f "$here/node/node_modules/azurite/package.json" ]]; then
  installed="$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' \
    "$here/node/node_modules/azurite/package.json" | head -n1)"
fi
if [[ -n "$wanted" && "$installed" == "$wanted" && -x "$here/node/node_modules/.bin/azurite-blob" ]]
then
  echo "install-object-storage: azurite $installed already installed"
else
  if ! command -v npm >/dev/null; then
    echo "install-object-storage: npm not found (apt-get install -y npm)" >&2
    exit 2
  fi
  echo "install-object-storage: npm install azurite $wanted"
  if [[ -f "$here/node/package-lock.json" ]]; then
    npm --prefix "$here/node" ci --no-audit --no-fund --loglevel=error
  else
    npm --prefix "$here/node" install --no-audit --no-fund --loglevel=error
  fi
fi

echo "install-object-storage: done in $((SECONDS - start)) s"
