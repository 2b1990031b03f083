"""Handlers of the crictl-like verbs. Each takes the parsed args and a CRIClient, returns an exit code."""

from __future__ import annotations

import base64
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

from frakpy.cli import output
from frakpy.cli.errors import CLIError
from frakpy.cli.files import load_message
from frakpy.cri.client import CRIClient
from frakpy.cri.proto import api_pb2 as pb

Handler = Callable[[Any, CRIClient], int]
T = TypeVar("T")
PULL_TIMEOUT = 600.0  # pulls outlive the per-RPC default timeout
FOLLOW_POLL = 0.2  # logs -f: seconds between reads of the log file
FOLLOW_STATUS_EVERY = 1.0  # logs -f: seconds between checks that the container still runs

POD_STATES = {"ready": pb.SANDBOX_READY, "notready": pb.SANDBOX_NOTREADY}
CONTAINER_STATES = {
    "created": pb.CONTAINER_CREATED,
    "running": pb.CONTAINER_RUNNING,
    "exited": pb.CONTAINER_EXITED,
    "unknown": pb.CONTAINER_UNKNOWN,
}
POD_STATE_TEXT = {pb.SANDBOX_READY: "Ready", pb.SANDBOX_NOTREADY: "NotReady"}
CONTAINER_STATE_TEXT = {
    pb.CONTAINER_CREATED: "Created",
    pb.CONTAINER_RUNNING: "Running",
    pb.CONTAINER_EXITED: "Exited",
    pb.CONTAINER_UNKNOWN: "Unknown",
}


# --- helpers -----------------------------------------------------------------------------------


def _labels(pairs: Sequence[str] | None) -> dict[str, str]:
    labels = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CLIError(f"invalid label {pair!r}: expected key=value", exit_code=2)
        labels[key] = value
    return labels


def _state(value: str | None, table: Mapping[str, T], what: str) -> T | None:
    if value is None:
        return None
    key = value.lower().replace("_", "").removeprefix("sandbox").removeprefix("container")
    if key not in table:
        raise CLIError(f"invalid {what} state {value!r}: one of {', '.join(table)}", exit_code=2)
    return table[key]


def _pick(kind: str, prefix: str, ids: Sequence[str]) -> str:
    """Exact id, else the one id starting with ``prefix``; none or several is an error."""
    if not prefix:
        raise CLIError(f"empty {kind} id")
    if prefix in ids:
        return prefix
    matches = sorted({i for i in ids if i.startswith(prefix)})
    if not matches:
        raise CLIError(f"no {kind} matches {prefix!r}")
    if len(matches) > 1:
        shown = ", ".join(output.short_id(m) for m in matches[:5])
        raise CLIError(f"{kind} id prefix {prefix!r} is ambiguous: {shown}")
    return matches[0]


def resolve_pod(cri: CRIClient, prefix: str) -> str:
    items = cri.call(cri.runtime.ListPodSandbox, pb.ListPodSandboxRequest()).items
    return _pick("pod", prefix, [p.id for p in items])


def resolve_container(cri: CRIClient, prefix: str) -> str:
    items = cri.call(cri.runtime.ListContainers, pb.ListContainersRequest()).containers
    return _pick("container", prefix, [c.id for c in items])


def resolve_image(cri: CRIClient, ref: str) -> pb.Image:
    """An image by reference (via ImageStatus) or by a prefix of its id."""
    status = cri.call(cri.image.ImageStatus, pb.ImageStatusRequest(image=pb.ImageSpec(image=ref)))
    if status.image.id:
        return cast(pb.Image, status.image)
    images = cri.call(cri.image.ListImages, pb.ListImagesRequest()).images
    by_id = {}
    for img in images:
        by_id[img.id] = img
        by_id[img.id.removeprefix("sha256:")] = img
    key = _pick("image", ref.removeprefix("sha256:"), list(by_id))
    return cast(pb.Image, by_id[key])


def _dump_message(msg: Any, fmt: str) -> None:
    output.dump(output.message_to_dict(msg), fmt)


def _verbose_dump(key: str, msg: Any, info: dict[str, str], fmt: str) -> None:
    data: dict[str, Any] = {key: output.message_to_dict(msg)}
    data.update(output.parse_info(dict(info)))
    output.dump(data, fmt)


# --- runtime information ---------------------------------------------------------------------


def cmd_version(args: Any, cri: CRIClient) -> int:
    v = cri.call(cri.runtime.Version, pb.VersionRequest(version="v1"))
    print(f"Version:  {v.version}")
    print(f"RuntimeName:  {v.runtime_name}")
    print(f"RuntimeVersion:  {v.runtime_version}")
    print(f"RuntimeApiVersion:  {v.runtime_api_version}")
    return 0


def cmd_info(args: Any, cri: CRIClient) -> int:
    resp = cri.call(cri.runtime.Status, pb.StatusRequest(verbose=True))
    data: dict[str, Any] = {"status": output.message_to_dict(resp.status)}
    if resp.runtime_handlers:
        data["runtimeHandlers"] = [output.message_to_dict(h) for h in resp.runtime_handlers]
    if resp.HasField("features"):
        data["features"] = output.message_to_dict(resp.features)
    data.update(output.parse_info(dict(resp.info)))
    output.dump(data, args.output)
    return 0


def cmd_runtime_config(args: Any, cri: CRIClient) -> int:
    _dump_message(cri.call(cri.runtime.RuntimeConfig, pb.RuntimeConfigRequest()), args.output)
    return 0


def cmd_imagefsinfo(args: Any, cri: CRIClient) -> int:
    _dump_message(cri.call(cri.image.ImageFsInfo, pb.ImageFsInfoRequest()), args.output)
    return 0


# --- listings --------------------------------------------------------------------------------


def cmd_pods(args: Any, cri: CRIClient) -> int:
    flt = pb.PodSandboxFilter(label_selector=_labels(args.label))
    if args.id:
        flt.id = resolve_pod(cri, args.id)
    state = _state(args.state, POD_STATES, "pod")
    if state is not None:
        flt.state.state = state
    pods = list(cri.call(cri.runtime.ListPodSandbox, pb.ListPodSandboxRequest(filter=flt)).items)
    if args.name:
        pods = [p for p in pods if re.search(args.name, p.metadata.name)]
    if args.namespace:
        pods = [p for p in pods if re.search(args.namespace, p.metadata.namespace)]
    pods.sort(key=lambda p: p.created_at, reverse=True)
    if args.quiet:
        for p in pods:
            print(p.id)
    elif args.output in ("json", "yaml"):
        output.dump(output.message_to_dict(pb.ListPodSandboxResponse(items=pods)), args.output)
    else:
        output.table(
            ["POD ID", "CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT", "RUNTIME"],
            (
                [
                    output.short_id(p.id, args.no_trunc),
                    output.ago(p.created_at),
                    POD_STATE_TEXT.get(p.state, str(p.state)),
                    p.metadata.name,
                    p.metadata.namespace,
                    str(p.metadata.attempt),
                    p.runtime_handler or "(default)",
                ]
                for p in pods
            ),
        )
    return 0


def _image_name(c: Any, no_trunc: bool) -> str:
    ref = c.image.image or c.image_ref
    if not no_trunc and ref.startswith("sha256:"):
        return output.short_id(ref)
    return str(ref)


def cmd_ps(args: Any, cri: CRIClient) -> int:
    flt = pb.ContainerFilter(label_selector=_labels(args.label))
    if args.pod:
        flt.pod_sandbox_id = resolve_pod(cri, args.pod)
    if args.id:
        flt.id = resolve_container(cri, args.id)
    state = _state(args.state, CONTAINER_STATES, "container")
    if state is None and not args.all:
        state = pb.CONTAINER_RUNNING
    if state is not None:
        flt.state.state = state
    ctrs = list(cri.call(cri.runtime.ListContainers, pb.ListContainersRequest(filter=flt)).containers)
    if args.name:
        ctrs = [c for c in ctrs if re.search(args.name, c.metadata.name)]
    ctrs.sort(key=lambda c: c.created_at, reverse=True)
    if args.quiet:
        for c in ctrs:
            print(c.id)
    elif args.output in ("json", "yaml"):
        output.dump(output.message_to_dict(pb.ListContainersResponse(containers=ctrs)), args.output)
    else:
        output.table(
            ["CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT", "POD ID"],
            (
                [
                    output.short_id(c.id, args.no_trunc),
                    _image_name(c, args.no_trunc),
                    output.ago(c.created_at),
                    CONTAINER_STATE_TEXT.get(c.state, str(c.state)),
                    c.metadata.name,
                    str(c.metadata.attempt),
                    output.short_id(c.pod_sandbox_id, args.no_trunc),
                ]
                for c in ctrs
            ),
        )
    return 0


def _image_rows(img: Any, no_trunc: bool, digests: bool = False, pinned: bool = False) -> list[list[str]]:
    """crictl's rows: IMAGE TAG [DIGEST] IMAGE ID SIZE [PINNED], one per repo tag."""
    image_id = output.short_id(img.id, no_trunc)
    size = output.human_size(img.size)
    digest_repo, digest = "<none>", "<none>"
    if img.repo_digests:
        digest_repo, _, digest = img.repo_digests[0].partition("@")
        digest = output.short_id(digest, no_trunc)
    pairs = []
    for tag in img.repo_tags:
        repo, _, name = tag.rpartition(":")
        if "/" in name or not repo:  # "host:port/repo" without a tag
            repo, name = tag, "<none>"
        pairs.append((repo, name))
    if not pairs:
        pairs.append((digest_repo, "<none>"))
    rows = []
    for repo, name in pairs:
        row = [repo, name, *([digest] if digests else []), image_id, size]
        if pinned:
            row.append(str(bool(img.pinned)).lower())
        rows.append(row)
    return rows


def _image_verbose(img: Any) -> str:
    """crictl images -v: one block of ``Key: value`` lines per image."""
    lines = [f"ID: {img.id}"]
    lines += [f"RepoTags: {tag}" for tag in img.repo_tags]
    lines += [f"RepoDigests: {digest}" for digest in img.repo_digests]
    if img.size:
        lines.append(f"Size: {img.size}")
    if img.HasField("uid"):
        lines.append(f"Uid: value:{img.uid.value}")
    if img.username:
        lines.append(f"Username: {img.username}")
    if img.pinned:
        lines.append("Pinned: true")
    return "\n".join(lines) + "\n"


def cmd_images(args: Any, cri: CRIClient) -> int:
    req = pb.ListImagesRequest()
    if args.image:
        req.filter.image.image = args.image
    images = list(cri.call(cri.image.ListImages, req).images)
    if args.quiet:
        for img in images:
            print(img.id)
    elif args.output in ("json", "yaml"):
        output.dump(output.message_to_dict(pb.ListImagesResponse(images=images)), args.output)
    elif getattr(args, "verbose", False):
        for img in images:
            print(_image_verbose(img))
    else:
        digests, pinned = getattr(args, "digests", False), getattr(args, "pinned", False)
        rows = [r for img in images for r in _image_rows(img, args.no_trunc, digests, pinned)]
        headers = ["IMAGE", "TAG", *(["DIGEST"] * digests), "IMAGE ID", "SIZE", *(["PINNED"] * pinned)]
        output.table(headers, sorted(rows))
    return 0


# --- pods ----------------------------------------------------------------------------------------


def cmd_runp(args: Any, cri: CRIClient) -> int:
    config = load_message(args.pod_config, pb.PodSandboxConfig())
    req = pb.RunPodSandboxRequest(config=config, runtime_handler=args.runtime or "")
    print(cri.call(cri.runtime.RunPodSandbox, req).pod_sandbox_id)
    return 0


def cmd_stopp(args: Any, cri: CRIClient) -> int:
    for prefix in args.pod_ids:
        pod_id = resolve_pod(cri, prefix)
        cri.call(cri.runtime.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        print(f"Stopped sandbox {pod_id}")
    return 0


def cmd_rmp(args: Any, cri: CRIClient) -> int:
    for prefix in args.pod_ids:
        pod_id = resolve_pod(cri, prefix)
        if args.force:
            cri.call(cri.runtime.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        cri.call(cri.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
        print(f"Removed sandbox {pod_id}")
    return 0


def cmd_inspectp(args: Any, cri: CRIClient) -> int:
    pod_id = resolve_pod(cri, args.pod_id)
    req = pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True)
    resp = cri.call(cri.runtime.PodSandboxStatus, req)
    _verbose_dump("status", resp.status, resp.info, args.output)
    return 0


# --- containers ----------------------------------------------------------------------------------


def cmd_create(args: Any, cri: CRIClient) -> int:
    pod_id = resolve_pod(cri, args.pod_id)
    config = load_message(args.container_config, pb.ContainerConfig())
    sandbox = load_message(args.pod_config, pb.PodSandboxConfig())
    req = pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=sandbox)
    print(cri.call(cri.runtime.CreateContainer, req).container_id)
    return 0


def cmd_start(args: Any, cri: CRIClient) -> int:
    for prefix in args.ids:
        cid = resolve_container(cri, prefix)
        cri.call(cri.runtime.StartContainer, pb.StartContainerRequest(container_id=cid))
        print(cid)
    return 0


def cmd_stop(args: Any, cri: CRIClient) -> int:
    for prefix in args.ids:
        cid = resolve_container(cri, prefix)
        req = pb.StopContainerRequest(container_id=cid, timeout=args.timeout)
        cri.call(cri.runtime.StopContainer, req, timeout=max(cri.timeout, args.timeout + 10))
        print(cid)
    return 0


def cmd_rm(args: Any, cri: CRIClient) -> int:
    for prefix in args.ids:
        cid = resolve_container(cri, prefix)
        if args.force:
            cri.call(cri.runtime.StopContainer, pb.StopContainerRequest(container_id=cid, timeout=0))
        cri.call(cri.runtime.RemoveContainer, pb.RemoveContainerRequest(container_id=cid))
        print(cid)
    return 0


def cmd_inspect(args: Any, cri: CRIClient) -> int:
    cid = resolve_container(cri, args.id)
    resp = cri.call(cri.runtime.ContainerStatus, pb.ContainerStatusRequest(container_id=cid, verbose=True))
    _verbose_dump("status", resp.status, resp.info, args.output)
    return 0


def cmd_exec(args: Any, cri: CRIClient) -> int:
    if not args.command:
        raise CLIError("exec needs a command after the container id", exit_code=2)
    cid = resolve_container(cri, args.id)
    if getattr(args, "interactive", False) or getattr(args, "tty", False):
        from frakpy.cli.streams import cmd_exec_stream

        return cmd_exec_stream(args, cri, cid)
    req = pb.ExecSyncRequest(container_id=cid, cmd=args.command, timeout=args.timeout)
    deadline = args.timeout + 10 if args.timeout else None
    resp = cri.call(cri.runtime.ExecSync, req, timeout=deadline if deadline else 24 * 3600)
    sys.stdout.flush()
    sys.stdout.buffer.write(resp.stdout)
    sys.stdout.buffer.flush()
    sys.stderr.flush()
    sys.stderr.buffer.write(resp.stderr)
    sys.stderr.buffer.flush()
    return int(resp.exit_code)


def cmd_attach(args: Any, cri: CRIClient) -> int:
    from frakpy.cli.streams import cmd_attach as attach

    return attach(args, cri)


def cmd_port_forward(args: Any, cri: CRIClient) -> int:
    from frakpy.cli.streams import cmd_port_forward as port_forward

    return port_forward(args, cri)


def cmd_logs(args: Any, cri: CRIClient) -> int:
    from frakpy.cli.logs import LogJoiner

    cid = resolve_container(cri, args.id)
    status = cri.call(cri.runtime.ContainerStatus, pb.ContainerStatusRequest(container_id=cid)).status
    path = status.log_path
    if not path:
        raise CLIError(f"container {cid} has no log path")
    try:
        fh = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 - kept open while following
    except OSError as exc:
        raise CLIError(f"container {cid}: cannot read log {path}: {exc.strerror or exc}") from exc
    with fh:
        joiner = LogJoiner()
        entries = [e for e in map(joiner.feed, fh.readlines()) if e is not None]
        if not args.follow:
            entries.extend(joiner.flush())  # a trailing partial is still worth showing
        if args.tail is not None and args.tail >= 0:
            entries = entries[-args.tail :] if args.tail else []
        for e in entries:
            _emit(e.stream, e.text)
        if args.follow:
            _follow(cri, cid, fh, joiner)
    return 0


def _emit(stream: str, text: str) -> None:
    out = sys.stderr if stream == "stderr" else sys.stdout
    out.write(text + "\n")
    out.flush()


def _follow(cri: CRIClient, cid: str, fh: Any, joiner: Any) -> None:
    """Print lines as they are appended until the container is no longer running (or Ctrl-C)."""
    buf = ""
    done = False
    last_check = time.monotonic()
    try:
        while True:
            chunk = fh.read()
            if chunk:
                buf += chunk
                *lines, buf = buf.split("\n")
                for line in lines:
                    e = joiner.feed(line)
                    if e is not None:
                        _emit(e.stream, e.text)
                continue
            if done:
                for e in joiner.flush():
                    _emit(e.stream, e.text)
                return
            if time.monotonic() - last_check >= FOLLOW_STATUS_EVERY:
                last_check = time.monotonic()
                st = cri.call(cri.runtime.ContainerStatus, pb.ContainerStatusRequest(container_id=cid)).status
                if st.state != pb.CONTAINER_RUNNING:
                    done = True  # read once more: the container may have written just before exiting
                    continue
            time.sleep(FOLLOW_POLL)
    except KeyboardInterrupt:
        return


# --- images --------------------------------------------------------------------------------------


def _auth(args: Any) -> pb.AuthConfig | None:
    if args.creds and args.auth:
        raise CLIError("use either --creds or --auth, not both", exit_code=2)
    if args.creds:
        user, sep, password = args.creds.partition(":")
        if not sep:
            raise CLIError("--creds must be USERNAME:PASSWORD", exit_code=2)
        return pb.AuthConfig(username=user, password=password)
    if args.auth:
        try:
            base64.b64decode(args.auth, validate=True)
        except ValueError as exc:
            raise CLIError(f"--auth is not valid base64: {exc}", exit_code=2) from exc
        return pb.AuthConfig(auth=args.auth)
    return None


def cmd_pull(args: Any, cri: CRIClient) -> int:
    req = pb.PullImageRequest(image=pb.ImageSpec(image=args.image))
    auth = _auth(args)
    if auth is not None:
        req.auth.CopyFrom(auth)
    if args.pod_config:
        req.sandbox_config.CopyFrom(load_message(args.pod_config, pb.PodSandboxConfig()))
    from frakpy.cli.pull import run_pull

    return run_pull(cri, req, timeout=max(cri.timeout, PULL_TIMEOUT))


def cmd_inspecti(args: Any, cri: CRIClient) -> int:
    rc = 0
    for ref in args.images:
        req = pb.ImageStatusRequest(image=pb.ImageSpec(image=ref), verbose=True)
        resp = cri.call(cri.image.ImageStatus, req)
        if not resp.image.id:
            print(f"frakpy: no such image {ref!r}", file=sys.stderr)
            rc = 1
            continue
        _verbose_dump("status", resp.image, resp.info, args.output)
    return rc


def cmd_rmi(args: Any, cri: CRIClient) -> int:
    for ref in args.images:
        img = resolve_image(cri, ref)
        cri.call(cri.image.RemoveImage, pb.RemoveImageRequest(image=pb.ImageSpec(image=img.id)))
        print(f"Deleted: {', '.join(img.repo_tags) or img.id}")
    return 0
