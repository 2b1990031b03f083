#!/usr/bin/env bash
# Set up, then run every test tier: unit (fakes), integration (real QEMU under TCG,
# real CNI plugins, real registry) and e2e (frakpyd driven over CRI).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
set +e
.venv/bin/python -m pytest tests "$@"
rc=$?
set -e
# pytest exits 5 when nothing ran: that is a failure for us, never a pass
[ $rc -eq 5 ] && echo "no tests ran" >&2
exit $rc
