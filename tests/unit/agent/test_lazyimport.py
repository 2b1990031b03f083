"""frakpy_guest.lazyimport: deferred module bodies, and the agent's DEFERRED list staying deferred."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def run_py(code: str, tmp_path: Path) -> str:
    """Run ``code`` in a fresh interpreter (module state must not leak into the test process)."""
    env_path = f"{REPO / 'guest-agent'}:{REPO}:{tmp_path}"
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         env={"PYTHONPATH": env_path}, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_body_runs_on_first_use_only(tmp_path: Path) -> None:
    (tmp_path / "slowmod.py").write_text("print('BODY')\nVALUE = 42\n")
    out = run_py("""
        from frakpy_guest import lazyimport
        lazyimport.install({"slowmod"})
        import slowmod
        import slowmod as again          # a second import reads __spec__: must not run the body
        print("imported", lazyimport.loaded("slowmod"), slowmod.__name__, again is slowmod)
        print("value", slowmod.VALUE, lazyimport.loaded("slowmod"))
        print("type", type(slowmod).__name__)
    """, tmp_path)
    assert out.splitlines() == ["imported False slowmod True", "BODY", "value 42 True", "type module"]


def test_from_import_and_setattr_load(tmp_path: Path) -> None:
    (tmp_path / "m1.py").write_text("X = 1\n")
    (tmp_path / "m2.py").write_text("Y = 2\n")
    out = run_py("""
        from frakpy_guest import lazyimport
        lazyimport.install({"m1", "m2"})
        from m1 import X
        import m2
        m2.Z = 3
        print(X, lazyimport.loaded("m1"), m2.Y, m2.Z, lazyimport.loaded("m2"))
    """, tmp_path)
    assert out.split() == ["1", "True", "2", "3", "True"]


def test_failing_body_raises_at_use_and_is_not_cached(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("raise RuntimeError('bad body')\n")
    out = run_py("""
        import sys
        from frakpy_guest import lazyimport
        lazyimport.install({"broken"})
        import broken
        try:
            broken.anything
        except RuntimeError as exc:
            print("raised", exc, "broken" in sys.modules)
    """, tmp_path)
    assert out.strip() == "raised bad body False"


def test_deferred_package_and_submodule(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("print('PKG')\nA = 1\n")
    (pkg / "sub.py").write_text("B = 2\n")
    out = run_py("""
        from frakpy_guest import lazyimport
        lazyimport.install({"pkg"})
        import pkg.sub                   # binding sub onto pkg is a real use of pkg
        print(pkg.sub.B, pkg.A)
    """, tmp_path)
    assert out.split() == ["PKG", "2", "1"]


def test_agent_start_leaves_deferred_modules_unexecuted(tmp_path: Path) -> None:
    """What the agent imports before serving keeps every DEFERRED name unexecuted (or absent):
    a new import that uses one of them at import time would silently undo the saving."""
    out = run_py("""
        import sys
        from frakpy_guest import lazyimport
        from frakpy_guest.__main__ import DEFERRED
        lazyimport.install(DEFERRED)
        sys.modules["ssl"] = None
        import asyncio, logging
        from frakpy_guest import server
        from frakpy.agent.protocol import agent_pb2
        agent_pb2.HealthResponse.FromString(agent_pb2.HealthResponse().SerializeToString())

        async def serve_briefly():  # what server.run does first: signal handlers, the loop
            import os, signal
            from frakpy_guest import init
            loop = asyncio.get_running_loop()
            init.Reaper().install(loop)
            got = asyncio.Event()
            init.on_signal(loop, signal.SIGUSR1, got.set)
            os.kill(os.getpid(), signal.SIGUSR1)
            await asyncio.wait_for(got.wait(), 5)

        asyncio.run(serve_briefly())
        print("executed:", sorted(n for n in DEFERRED if lazyimport.loaded(n)))
    """, tmp_path)
    assert out.strip() == "executed: []"
