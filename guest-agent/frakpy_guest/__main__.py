"""Entry point of the guest agent (called by /init, or ``python -m frakpy_guest`` for debugging).

Start-up order is chosen for boot speed under TCG, where every import is expensive: timestamps
first, then the PID-1 mounts (ctypes only), then asyncio with ``ssl`` blocked (asyncio would
otherwise import it for nothing) and the modules in ``DEFERRED`` left unexecuted until first use
(see lazyimport), then protobuf and the agent services.
"""

import os
import sys
import time

# Imported by asyncio, logging or protobuf but not needed to serve the first RPCs. Measured in a
# cold-booted guest under TCG: the agent's imports take 0.6 s instead of 0.8 s with these deferred
# (protobuf's pure-Python backend, unused with upb, is most of it). Names, not guesses: each one
# was checked to stay unexecuted through start-up (tests/unit/agent/test_lazyimport.py).
DEFERRED = frozenset({
    "inspect", "linecache", "calendar", "locale", "textwrap",
    "asyncio.staggered", "asyncio.trsock", "asyncio.sslproto",
    "google.protobuf.internal.python_message", "google.protobuf.text_format",
})


def main() -> None:
    start_uptime_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    start_monotonic = time.monotonic()
    sys.dont_write_bytecode = True  # the root file system is read-only
    pid1 = os.getpid() == 1

    from frakpy_guest import init

    if pid1:
        init.setup_pid1()
    debug = init.debug_requested()

    from frakpy_guest import lazyimport

    lazyimport.install(DEFERRED)
    if "ssl" not in sys.modules:
        sys.modules["ssl"] = None  # type: ignore[assignment]  # makes `import ssl` fail fast
    import asyncio
    import logging

    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if debug else logging.INFO,
                        format="frakpy-agent: %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("frakpy_guest")

    from frakpy_guest import server

    try:
        asyncio.run(server.run(start_uptime_ns=start_uptime_ns, start_monotonic=start_monotonic, pid1=pid1))
    except BaseException:
        log.exception("agent failed")
        if not pid1:
            raise
    # PID 1 must never exit (the kernel would panic): power the VM off instead
    if pid1:
        init.power_off()


if __name__ == "__main__":
    main()
