"""`frakpy images import PATH`: load an OCI layout, oci-archive or docker-archive into the node's
image store. CRI has no import call, so this opens the daemon's store directly (same code as
PullImage, same SQLite database in WAL mode, safe next to a running frakpyd); run it as root on
the node, with the daemon's config."""

from __future__ import annotations

import argparse
import asyncio
import sys


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="frakpy images import", description=__doc__)
    ap.add_argument("path", help="OCI layout directory, oci-archive tar or docker-archive tar")
    ap.add_argument("--name", help="repository for images the archive names only by tag (e.g. latest) or not at all")
    ap.add_argument("--config", "-c", help="frakpyd's config file (for its state dir and image settings)")
    args = ap.parse_args(argv)

    from frakpy import config as cfgmod
    from frakpy.errors import FrakpyError
    from frakpy.image.store import ImageStore
    from frakpy.runtime import pull_config
    from frakpy.store.db import Database

    try:
        cfg = cfgmod.load(args.config)
        db = Database(cfg.state_dir / "frakpy.db")
        store = ImageStore(db, cfg.state_dir, pull_config(cfg),
                           compression="" if cfg.image.compression == "none" else cfg.image.compression)

        async def run() -> list:  # type: ignore[type-arg]
            try:
                return await store.import_archive(args.path, name=args.name)
            finally:
                await store.aclose()

        records = asyncio.run(run())
    except FrakpyError as exc:
        print(f"frakpy images import: {exc}", file=sys.stderr)
        return 1
    for rec in records:
        print(f"imported {rec.id}  {' '.join(rec.repo_tags) or '<untagged>'}")
    return 0
