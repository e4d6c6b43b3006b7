#!/usr/bin/env bash
# Set up (first run) and run every check: ruff, mypy --strict, unit, integration and e2e tests.
# Extra arguments go to pytest (e.g. -k backup).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --test
.venv/bin/ruff check controlplane tests bench e2e
.venv/bin/ruff format --check controlplane tests bench e2e
.venv/bin/mypy
.venv/bin/pytest tests/unit "$@"
# Each integration test runs its own server, ports and directories: they run three at a time.
# tests/scenarios are the user scenarios, here on the local orchestrator; tests/compat holds
# pgEdge's fields and the request bodies of its guide.
# The slowest twenty are listed at the end, so a run that grows shows where.
.venv/bin/pytest tests/integration tests/scenarios tests/security tests/compat \
  --orchestrator local -n 3 --durations=20 "$@"
# The same scenarios on the Docker orchestrator against a private dockerd, plus the Docker-only
# checks (it installs docker.io and builds the images on first run). CONTROLPLANE_SKIP_E2E=1
# skips it.
if [ "${CONTROLPLANE_SKIP_E2E:-0}" != "1" ]; then
  e2e/run
fi
