#!/usr/bin/env bash
# Set up (first run) and run every check: ruff, mypy --strict, unit, integration and e2e tests.
# Extra arguments go to pytest (e.g. -k backup). Every stage runs, even after one failed; the
# exit status is non-zero when any did.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --test
.venv/bin/ruff check controlplane tests bench e2e
.venv/bin/ruff format --check controlplane tests bench e2e
.venv/bin/mypy
.venv/bin/pytest tests/unit "$@"

# The Docker stages (CONTROLPLANE_SKIP_E2E=1 skips them): a private dockerd and its images
# (docker.io and the images are installed and built on first run), the same scenarios on the
# Docker orchestrator, the Docker-only checks, and the swarm stages on daemons of their own.
# The engine, the images and the swarm stages are made and run while the local stage runs,
# which leaves a core idle much of the time; the docker stage runs after it.
e2e=1
[ "${CONTROLPLANE_SKIP_E2E:-0}" = "1" ] && e2e=0
early_log=$(mktemp /tmp/controlplane-e2e-early.XXXXXX)
early=""
finish() {
  if [ -n "$early" ] && kill -0 "$early" 2>/dev/null; then
    # Its own process group (setsid): the swarm stages stop their daemons on the way out.
    kill -TERM -- "-$early" 2>/dev/null || true
    wait "$early" 2>/dev/null || true
  fi
  [ "$e2e" = "1" ] && e2e/run down || true
  rm -f "$early_log"
}
trap finish EXIT
if [ "$e2e" = "1" ]; then
  setsid bash -c 'e2e/run up && if [ "${CONTROLPLANE_SKIP_SWARM:-0}" != "1" ]; then
    e2e/run swarm; fi' >"$early_log" 2>&1 &
  early=$!
fi

rc=0
# Each integration test runs its own server, ports and directories: they run three at a time.
# tests/scenarios are the user scenarios, here on the local orchestrator; tests/compat holds
# pgEdge's fields and the request bodies of its guide.
# The slowest twenty are listed at the end, so a run that grows shows where.
.venv/bin/pytest tests/integration tests/scenarios tests/security tests/compat \
  --orchestrator local -n 3 --durations=20 "$@" || rc=$?

if [ "$e2e" = "1" ]; then
  # Waits for the early `up` when it is still running.
  e2e/run up || rc=$?
  e2e/run test "$@" || rc=$?
  early_rc=0
  wait "$early" || early_rc=$?
  early=""
  printf '\n== the engine, the images and the swarm stages (exit %s)\n' "$early_rc" >&2
  cat "$early_log" >&2
  [ "$early_rc" -eq 0 ] || rc=$early_rc
fi
exit $rc
