"""Make the repository root (for ``tests.fakes``) and ``guest-agent/`` importable."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
for path in (REPO, REPO / "guest-agent"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
