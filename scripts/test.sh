#!/usr/bin/env bash
# Set up, then run every test tier: unit (fakes), integration (real QEMU under TCG,
# real CNI plugins, real registry) and e2e (frakpyd driven over CRI).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
set +e
# Pods start from VM templates by default; the sandbox and container tests run a second time
# with cold boots so both ways a pod can start stay covered.
.venv/bin/python -m pytest tests "$@"
rc=$?
if [ $rc -eq 0 ]; then
  FRAKPY_TEST_VM_MODE=cold .venv/bin/python -m pytest "$@" \
    tests/integration/test_sandbox.py tests/integration/test_containers.py
  rc=$?
fi
set -e
# pytest exits 5 when nothing ran: that is a failure for us, never a pass
[ $rc -eq 5 ] && echo "no tests ran" >&2
exit $rc
