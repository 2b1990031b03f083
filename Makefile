# Developer shortcuts; the README's two commands are scripts/demo.sh and scripts/test.sh.
.PHONY: setup demo test unit protos protos-check lint guest bench
setup:        ; bash scripts/setup.sh
demo:         ; bash scripts/demo.sh
test:         ; bash scripts/test.sh
unit:         ; .venv/bin/python -m pytest tests/unit -q
protos:       ; .venv/bin/python tools/gen_protos.py
protos-check: ; .venv/bin/python tools/gen_protos.py --check
lint:         ; .venv/bin/ruff check frakpy tests guest-agent images bench tools
guest:        ; .venv/bin/python images/build.py
bench:        ; .venv/bin/python bench/run_sandbox.py
