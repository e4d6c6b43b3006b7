#!/usr/bin/env bash
# Set up (first run) and start the control plane: embedded state store, local orchestrator.
# Extra arguments go to `controlplane serve` (e.g. --port 3001).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/controlplane serve "$@"
