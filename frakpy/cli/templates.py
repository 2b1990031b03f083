"""``frakpy template build|list|rm``: manage VM templates without going through the daemon.

Runs on the node as root against the daemon's config (same templates dir, same guest), so a
template can be built ahead of the first pod, e.g. after installing a new guest image. Builds
take the same per-key file lock as the daemon, so a daemon and this command never build twice.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser("template", help="build, list or remove VM templates",
                       description="VM templates: pods start by restoring a saved VM of their handler")
    tsub = p.add_subparsers(dest="template_verb", metavar="ACTION", required=True)
    b = tsub.add_parser("build", help="build the template of a handler now (default: the default handler)")
    b.add_argument("handler_name", nargs="?", default="", metavar="HANDLER", help="runtime handler name")
    b.add_argument("--no-nic", action="store_true", help="the variant for pods without a network")
    b.set_defaults(handler_fn="template_build")
    ls = tsub.add_parser("list", help="list templates")
    ls.add_argument("-o", "--output", choices=("table", "json"), default="table")
    ls.set_defaults(handler_fn="template_list")
    rm = tsub.add_parser("rm", help="remove the templates of a handler (or all); pods rebuild them")
    rm.add_argument("handler_name", nargs="?", default="", metavar="HANDLER",
                    help="runtime handler name (default: all)")
    rm.set_defaults(handler_fn="template_rm")
    for q in (b, ls, rm):
        q.add_argument("--config", metavar="PATH", help="daemon config (default /etc/frakpy/config.toml)")
        q.set_defaults(handler="template")


def run(args: argparse.Namespace) -> int:
    from frakpy import config as cfgmod
    from frakpy.errors import FrakpyError
    from frakpy.vm.template import TemplateStore

    try:
        cfg = cfgmod.load(args.config)
        store = TemplateStore(cfg.templates_dir, cfg.run_dir)
        if args.handler_fn == "template_list":
            return _list(store, args.output)
        if args.handler_fn == "template_rm":
            return _rm(store, args.handler_name)
        return asyncio.run(_build(cfg, store, args.handler_name, nic=not args.no_nic))
    except FrakpyError as exc:
        print(f"frakpy: {exc}", file=sys.stderr)
        return 1


async def _build(cfg: Any, store: Any, handler_name: str, *, nic: bool) -> int:
    from frakpy.sandbox.vmboot import handler_spec

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    name = handler_name or cfg.daemon.default_handler
    handler = cfg.handler(name)
    run_dir = Path(tempfile.mkdtemp(prefix="frakpy-tmpl-", dir="/tmp"))
    try:
        spec, _ = handler_spec(cfg, handler, "template", run_dir)
        spec.net_placeholder = nic
        t = await store.get(name, spec, handler.boot_timeout_s)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    meta = t.meta()
    print(f"template {t.dir.name}: boot {meta['boot_s']} s, build {meta['build_s']} s, "
          f"state {meta['sizes']['state'] // 1024} KiB, guest RAM written {meta['memory_allocated'] >> 20} MiB")
    return 0


def _list(store: Any, output: str) -> int:
    rows = store.entries()
    if output == "json":
        print(json.dumps(rows, indent=2, sort_keys=True))
        return 0
    print(f"{'NAME':<40} {'CREATED':<20} {'RAM MiB':>8} {'STATE KiB':>10} {'BUILD s':>8}")
    import time

    for m in rows:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(m.get("created", 0)))
        print(f"{Path(m['dir']).name:<40} {created:<20} {m.get('memory_allocated', 0) >> 20:>8} "
              f"{m.get('sizes', {}).get('state', 0) // 1024:>10} {m.get('build_s', 0):>8}")
    return 0


def _rm(store: Any, handler: str) -> int:
    removed = 0
    for m in store.entries():
        if not handler or m.get("handler") == handler:
            shutil.rmtree(m["dir"], ignore_errors=True)
            removed += 1
    print(f"removed {removed} template(s)")
    return 0
