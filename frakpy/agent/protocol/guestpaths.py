"""Where things live inside a pod VM, and the spec placeholders the guest agent resolves.

Shared by frakpyd (which writes OCI specs naming these paths) and the guest agent (which
creates them). Standard library only, no imports from the rest of frakpy.

Layout in the guest::

    /run/frakpy/sandbox/              SANDBOX_DIR: pod-wide files
        hostname hosts resolv.conf    bind-mounted into every container of the pod
        shm/                          the pod's /dev/shm when containers share the pod IPC namespace
    /run/frakpy/containers/<cid>/     container_dir(cid): the OCI bundle
        config.json                   the runtime spec (after the agent resolved placeholders)
        rootfs/                       overlay mountpoint (lower = image_mount(key))
        upper/ work/                  overlay upper and work dirs
        termination-log               bind-mounted at the container's termination_message_path
    /run/frakpy/images/<key>/         image_mount(key): a read-only unpacked image
    /run/frakpy/shares/               SHARES_DIR: the 9p share carrying the pod's volumes

Placeholder contract (``linux.namespaces[].path`` of a spec built by the host):

    "@sandbox"            join the namespace of the agent's per-pod namespace holder process;
                          the agent substitutes ``/proc/<holder pid>/ns/<type>``.
    "@container:<id>"     join the namespace of container ``<id>`` of the same pod (kubectl
                          debug --target); the agent substitutes ``/proc/<init pid>/ns/<type>``
                          and fails the create if that container is not running.

Anything else starting with ``@`` is an error; absolute paths pass through unchanged.

Spec annotations under ``io.frakpy.`` are instructions to the agent, which reads them and
removes the ones marked "consumed" before handing the spec to crun (see frakpy.container.spec).
"""

from __future__ import annotations

ROOT = "/run/frakpy"
SANDBOX_DIR = f"{ROOT}/sandbox"
CONTAINERS_DIR = f"{ROOT}/containers"
IMAGES_DIR = f"{ROOT}/images"
SHARES_DIR = f"{ROOT}/shares"

PLACEHOLDER_PREFIX = "@"
SANDBOX_PLACEHOLDER = "@sandbox"
CONTAINER_PLACEHOLDER_PREFIX = "@container:"

TERMINATION_LOG = "termination-log"


def sandbox_file(name: str) -> str:
    """A pod-wide file such as ``hosts`` or ``resolv.conf``."""
    return f"{SANDBOX_DIR}/{name}"


def sandbox_shm() -> str:
    """The directory backing /dev/shm of every container sharing the pod IPC namespace."""
    return f"{SANDBOX_DIR}/shm"


def container_dir(container_id: str) -> str:
    """The OCI bundle directory of one container."""
    return f"{CONTAINERS_DIR}/{container_id}"


def container_rootfs(container_id: str) -> str:
    return f"{container_dir(container_id)}/rootfs"


def termination_log(container_id: str) -> str:
    return f"{container_dir(container_id)}/{TERMINATION_LOG}"


def image_mount(image_key: str) -> str:
    """Where an unpacked image is mounted read-only (the overlay lower dir)."""
    return f"{IMAGES_DIR}/{image_key}"


def container_placeholder(container_id: str) -> str:
    """The namespace placeholder naming another container of the same pod."""
    return f"{CONTAINER_PLACEHOLDER_PREFIX}{container_id}"


def parse_placeholder(path: str) -> tuple[str, str] | None:
    """``("sandbox", "")`` or ``("container", id)`` for a placeholder, None for a plain path.

    Raises ValueError for a malformed placeholder so a typo never reaches crun.
    """
    if not path.startswith(PLACEHOLDER_PREFIX):
        return None
    if path == SANDBOX_PLACEHOLDER:
        return ("sandbox", "")
    if path.startswith(CONTAINER_PLACEHOLDER_PREFIX) and len(path) > len(CONTAINER_PLACEHOLDER_PREFIX):
        return ("container", path[len(CONTAINER_PLACEHOLDER_PREFIX):])
    raise ValueError(f"unknown namespace placeholder {path!r}: expected '@sandbox' or '@container:<id>'")


# Spec annotations the host writes for the agent. "Consumed" ones change the spec: the agent
# applies them and deletes the key before crun sees the spec; the others are informational.
ANN_USER = "io.frakpy.user"  # consumed: JSON for frakpy_guest.users.resolve -> process.user
ANN_VM_SYSCTLS = "io.frakpy.vm-sysctls"  # consumed: JSON {name: value} the agent writes VM-wide
ANN_HOST_DEVICES = "io.frakpy.host-devices"  # consumed: "all" -> add every VM device to linux.devices
# consumed: JSON list of {serial, path, access}: the guest node of the hot-added disk with that
# scsi serial goes into linux.devices at path, and is allowed (access) in the device cgroup
ANN_BLOCK_DEVICES = "io.frakpy.block-devices"
ANN_STOP_SIGNAL = "io.frakpy.stop-signal"  # signal name StopContainer sends first
ANN_STDIN = "io.frakpy.stdin"  # "true" when the container keeps a stdin pipe
ANN_STDIN_ONCE = "io.frakpy.stdin-once"  # "true": close stdin after the first attach detaches
ANN_NOTES = "io.frakpy.notes"  # JSON list of CRI settings that were ignored, and why
CONSUMED_ANNOTATIONS = frozenset({ANN_USER, ANN_VM_SYSCTLS, ANN_HOST_DEVICES, ANN_BLOCK_DEVICES})
