"""``frakpy``: a crictl-like command line for frakpyd, plus ``daemon`` and ``config``.

Only argparse is imported up front; gRPC, the CRI stubs and the daemon load when a verb needs them,
so ``frakpy --help`` stays fast and works before the daemon modules exist.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

DAEMON_HELP = "run the frakpyd daemon (arguments are passed through)"


def _output_opt(p: argparse.ArgumentParser, choices: tuple[str, ...], default: str) -> None:
    p.add_argument(
        "-o", "--output", choices=choices, default=default, help=f"output format (default {default})"
    )


def _label_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument("--label", action="append", metavar="KEY=VALUE", help="filter by label (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="frakpy", description="Talk to frakpyd over CRI, the way crictl does.")
    ap.add_argument(
        "-r",
        "--runtime-endpoint",
        metavar="ENDPOINT",
        help="unix:///path or /path of the CRI socket (default $FRAKPY_SOCKET or /run/frakpy/frakpy.sock)",
    )
    ap.add_argument(
        "-t",
        "--timeout",
        dest="rpc_timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="per-RPC timeout (default 30)",
    )
    sub = ap.add_subparsers(dest="verb", metavar="COMMAND")

    def verb(name: str, handler: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(handler=handler)
        return p

    verb("version", "cmd_version", "runtime name and version")
    _output_opt(verb("info", "cmd_info", "runtime status and verbose info"), ("json", "yaml"), "json")
    _output_opt(
        verb("runtime-config", "cmd_runtime_config", "configuration the runtime gives the kubelet"),
        ("json", "yaml"),
        "json",
    )
    _output_opt(verb("imagefsinfo", "cmd_imagefsinfo", "image filesystem usage"), ("json", "yaml"), "json")

    p = verb("pods", "cmd_pods", "list pod sandboxes")
    p.add_argument("--id", help="pod id (or unique prefix)")
    p.add_argument("--name", help="regular expression on the pod name")
    p.add_argument("--namespace", help="regular expression on the pod namespace")
    p.add_argument("--state", help="ready or notready")
    _label_opt(p)
    p.add_argument("-q", "--quiet", action="store_true", help="print pod ids only")
    p.add_argument("--no-trunc", action="store_true", help="do not shorten ids")
    _output_opt(p, ("table", "json", "yaml"), "table")

    p = verb("ps", "cmd_ps", "list containers")
    p.add_argument("-a", "--all", action="store_true", help="show all containers, not only running ones")
    p.add_argument("--id", help="container id (or unique prefix)")
    p.add_argument("-p", "--pod", help="pod id (or unique prefix)")
    p.add_argument("--name", help="regular expression on the container name")
    p.add_argument("--state", help="created, running, exited or unknown")
    _label_opt(p)
    p.add_argument("-q", "--quiet", action="store_true", help="print container ids only")
    p.add_argument("--no-trunc", action="store_true", help="do not shorten ids")
    _output_opt(p, ("table", "json", "yaml"), "table")

    p = verb("images", "cmd_images", "list images")
    p.add_argument("image", nargs="?", help="only images matching this reference")
    p.add_argument("-q", "--quiet", action="store_true", help="print image ids only")
    p.add_argument("--no-trunc", action="store_true", help="do not shorten ids")
    p.add_argument("--digests", action="store_true", help="add a DIGEST column (the first repo digest)")
    p.add_argument("--pinned", action="store_true", help="add a PINNED column")
    p.add_argument("-v", "--verbose", action="store_true", help="one block of details per image (as crictl -v)")
    _output_opt(p, ("table", "json", "yaml"), "table")

    p = verb("pull", "cmd_pull", "pull an image")
    p.add_argument("image")
    p.add_argument("--creds", metavar="USER:PASSWORD", help="registry credentials")
    p.add_argument("--auth", metavar="BASE64", help="base64 of USER:PASSWORD")
    p.add_argument("--pod-config", metavar="FILE", help="pod sandbox config (JSON or YAML)")

    p = verb("runp", "cmd_runp", "run a pod sandbox from a config file")
    p.add_argument("pod_config", metavar="POD_CONFIG", help="JSON or YAML PodSandboxConfig")
    p.add_argument("--runtime", metavar="HANDLER", help="runtime handler (RuntimeClass)")

    p = verb("stopp", "cmd_stopp", "stop pod sandboxes")
    p.add_argument("pod_ids", nargs="+", metavar="POD_ID")
    p = verb("rmp", "cmd_rmp", "remove pod sandboxes")
    p.add_argument("pod_ids", nargs="+", metavar="POD_ID")
    p.add_argument("-f", "--force", action="store_true", help="stop the pod first")
    p = verb("inspectp", "cmd_inspectp", "status of a pod sandbox")
    p.add_argument("pod_id", metavar="POD_ID")
    _output_opt(p, ("json", "yaml"), "json")

    p = verb("create", "cmd_create", "create a container in a pod")
    p.add_argument("pod_id", metavar="POD_ID")
    p.add_argument("container_config", metavar="CONTAINER_CONFIG", help="JSON or YAML ContainerConfig")
    p.add_argument("pod_config", metavar="POD_CONFIG", help="JSON or YAML PodSandboxConfig")
    p = verb("start", "cmd_start", "start created containers")
    p.add_argument("ids", nargs="+", metavar="ID")
    p = verb("stop", "cmd_stop", "stop running containers")
    p.add_argument("ids", nargs="+", metavar="ID")
    p.add_argument("--timeout", type=int, default=0, metavar="SECONDS", help="grace period before SIGKILL")
    p = verb("rm", "cmd_rm", "remove containers")
    p.add_argument("ids", nargs="+", metavar="ID")
    p.add_argument("-f", "--force", action="store_true", help="stop the container first")
    p = verb("inspect", "cmd_inspect", "status of a container")
    p.add_argument("id", metavar="ID")
    _output_opt(p, ("json", "yaml"), "json")

    p = verb("exec", "cmd_exec", "run a command in a container (ExecSync; with -i/-t streamed by CRI Exec)")
    p.add_argument("-s", "--sync", action="store_true", help="accepted for crictl compatibility; always sync")
    p.add_argument("--timeout", type=int, default=0, metavar="SECONDS", help="kill the command after this")
    p.add_argument("id", metavar="ID")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD")
    from frakpy.cli import streams

    streams.add_exec_flags(p)
    streams.add_parser(sub)

    p = verb("logs", "cmd_logs", "print a container's log")
    p.add_argument("id", metavar="ID")
    p.add_argument("--tail", type=int, metavar="N", help="only the last N lines")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")

    p = verb("inspecti", "cmd_inspecti", "status of images")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    _output_opt(p, ("json", "yaml"), "json")
    p = verb("rmi", "cmd_rmi", "remove images")
    p.add_argument("images", nargs="+", metavar="IMAGE")

    p = sub.add_parser("daemon", help=DAEMON_HELP, description=DAEMON_HELP, add_help=False)
    p.set_defaults(handler="daemon")
    p.add_argument("daemon_args", nargs=argparse.REMAINDER)

    p = sub.add_parser("config", help="show or validate the daemon config", description="daemon config")
    csub = p.add_subparsers(dest="config_verb", metavar="ACTION", required=True)
    d = csub.add_parser("default", help="print the commented default config")
    d.set_defaults(handler="config_default")
    c = csub.add_parser("check", help="validate a config file")
    c.add_argument("--config", metavar="PATH", help="config file (default /etc/frakpy/config.toml)")
    c.set_defaults(handler="config_check")

    from frakpy.cli import templates

    templates.add_parser(sub)
    return ap


def _run_daemon(args: Any) -> int:
    from frakpy.daemon import main as daemon_main

    return int(daemon_main(args.daemon_args) or 0)


def _config_default(args: Any) -> int:
    from frakpy import config as cfg

    text = cfg.render_default()
    print(text, end="" if text.endswith("\n") else "\n")
    return 0


def _config_check(args: Any) -> int:
    from frakpy import config as cfg
    from frakpy.errors import InvalidArgument

    try:
        cfg.load(args.config)
    except InvalidArgument as exc:
        print(f"frakpy: {exc}", file=sys.stderr)
        return 2
    print(f"config OK: {args.config or cfg.DEFAULT_PATH}")
    return 0


def _template(args: Any) -> int:
    from frakpy.cli import templates

    return templates.run(args)


LOCAL = {"daemon": _run_daemon, "config_default": _config_default, "config_check": _config_check,
         "template": _template}


def _run_cri(args: Any) -> int:
    import re

    from frakpy.cli import commands
    from frakpy.cli.errors import CLIError
    from frakpy.cri.client import CRIClient, CRIError

    try:
        with CRIClient(args.runtime_endpoint, timeout=args.rpc_timeout) as cri:
            return int(getattr(commands, args.handler)(args, cri))
    except CRIError as exc:
        print(f"frakpy: {exc}", file=sys.stderr)
        return 1
    except CLIError as exc:
        print(f"frakpy: {exc}", file=sys.stderr)
        return exc.exit_code
    except ValueError as exc:  # a bad endpoint
        print(f"frakpy: {exc}", file=sys.stderr)
        return 2
    except re.error as exc:
        print(f"frakpy: invalid regular expression: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["images", "import"]:
        from frakpy.cli.images_import import main as import_main

        return import_main(argv[2:])
    if argv[:1] == ["daemon"]:
        # Everything after `daemon` belongs to frakpyd, options included (argparse would eat them).
        return _run_daemon(argparse.Namespace(daemon_args=argv[1:]))
    ap = build_parser()
    args = ap.parse_args(argv)
    if not getattr(args, "handler", None):
        ap.print_help(sys.stderr)
        return 2
    try:
        if args.handler in LOCAL:
            return LOCAL[args.handler](args)
        return _run_cri(args)
    except BrokenPipeError:
        # `frakpy pods | head`: stop quietly, and keep Python from complaining at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
