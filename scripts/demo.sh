#!/usr/bin/env bash
# The main job: set up, start frakpyd, run a pod (one VM) through CRI and show it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m frakpy.demo "$@"
