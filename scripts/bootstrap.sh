#!/usr/bin/env bash
# Install what controlplane needs on Debian bookworm and create the virtualenv.
# Usage: scripts/bootstrap.sh [--test]   (--test adds the test tools and object-storage servers)
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# patroni and etcd-server: nodes with replicas (high availability), see README.
packages=(postgresql-15 pgbackrest postgresql-15-pglogical python3-venv patroni etcd-server etcd-client)
if [ "${1:-}" = "--test" ] && ! command -v npm >/dev/null 2>&1; then
  packages+=(nodejs npm)
fi
if [ "${1:-}" = "--test" ]; then
  # A real headless browser for the API docs page and the dashboard, and the driver the
  # dashboard's test steers it with (tests/integration/test_{docs,dashboard}_browser.py).
  packages+=(chromium chromium-driver)
fi
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  $SUDO apt-get update -qq
  # Debian starts a default cluster on install; controlplane runs its own clusters instead.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ "${1:-}" = "--test" ] && ! command -v promtool >/dev/null 2>&1; then
  # promtool checks and unit-tests deploy/prometheus/alerts.yml (tests/unit/test_alert_rules.py).
  # Only the package itself (no exporters), and no server left running where systemd starts one.
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus \
    >/dev/null
  if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
    $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null
if [ "${1:-}" = "--test" ]; then
  .venv/bin/pip install -q -e '.[test]'
  if [ -x tests/support/install-object-storage.sh ]; then
    tests/support/install-object-storage.sh .venv
  fi
else
  .venv/bin/pip install -q -e '.[server]'
fi
