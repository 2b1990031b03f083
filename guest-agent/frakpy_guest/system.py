"""The guest-wide side effects the services need, behind one small interface.

``LinuxSystem`` does the real thing (needs PID 1 / root inside the VM). Tests substitute a
recorder with the same methods, so the services run unprivileged on a developer's host.
"""

import contextlib
import os
import time

RNDADDENTROPY = 0x40085203  # _IOW('R', 0x03, int[2])
RNDRESEEDCRNG = 0x5207  # _IO('R', 0x07): reseed the CRNG from the input pool now
# The pod-wide copies of hostname/hosts/resolv.conf live in guestpaths.SANDBOX_DIR: they are
# bind-mounted over the VM's /etc files and into every container, and always written in place.
ETC_OVERLAY_DIR = "/run/frakpy/sandbox"
MNT_DETACH = 2


class System:
    """Interface (and documentation) of the side effects; every method may raise OSError."""

    def read_text(self, path: str) -> str:
        with open(path) as f:
            return f.read()

    def set_hostname(self, name: str) -> None:
        raise NotImplementedError

    def set_realtime_ns(self, ns: int) -> None:
        raise NotImplementedError

    def add_entropy(self, seed: bytes) -> int:
        """Mix ``seed`` into the kernel pool and credit it; returns the bits credited."""
        raise NotImplementedError

    def write_etc_file(self, name: str, content: str) -> None:
        """Replace /etc/<name> (hosts, resolv.conf) although the root file system is read-only."""
        raise NotImplementedError

    def sync(self) -> None:
        os.sync()

    def power_off(self) -> None:
        raise NotImplementedError

    # --- containers and storage (used lazily by the container services) ---

    def mount(self, source: str, target: str, fstype: str | None, flags: int = 0,
              data: str | None = None) -> None:
        raise NotImplementedError

    def umount(self, target: str) -> None:
        """Lazy unmount (MNT_DETACH); a target that is not mounted is not an error."""
        raise NotImplementedError

    def write_sysctl(self, name: str, value: str) -> None:
        path = "/proc/sys/" + name.replace(".", "/")
        with open(path, "w") as f:
            f.write(value)

    async def start_ns_holder(self, reaper) -> int:  # type: ignore[no-untyped-def]
        """Start the pod's PID/IPC namespace holder; returns its pid."""
        raise NotImplementedError


class LinuxSystem(System):
    def __init__(self, etc: str = "/etc", overlay_dir: str = ETC_OVERLAY_DIR) -> None:
        self.etc = etc
        self.overlay_dir = overlay_dir

    def set_hostname(self, name: str) -> None:
        import socket

        socket.sethostname(name)
        os.makedirs(self.overlay_dir, exist_ok=True)
        _write_in_place(os.path.join(self.overlay_dir, "hostname"), name + "\n")

    def set_realtime_ns(self, ns: int) -> None:
        time.clock_settime_ns(time.CLOCK_REALTIME, ns)

    def add_entropy(self, seed: bytes) -> int:
        import fcntl
        import struct

        bits = 8 * len(seed)
        fd = os.open("/dev/urandom", os.O_WRONLY | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, RNDADDENTROPY, struct.pack("ii", bits, len(seed)) + seed)
            # Once initialised, the kernel folds new entropy into its output only at the next
            # periodic reseed (up to a minute later); a VM restored from a template must not
            # hand out the template's random stream until then, so reseed right away.
            with contextlib.suppress(OSError):
                fcntl.ioctl(fd, RNDRESEEDCRNG)
        finally:
            os.close(fd)
        return bits

    def write_etc_file(self, name: str, content: str) -> None:
        # Either the image points /etc/<name> at a writable place with a symlink (we follow it),
        # or we keep the content on /run and bind-mount it over the read-only file once.
        path = os.path.join(self.etc, name)
        shadow = os.path.join(self.overlay_dir, name)
        os.makedirs(self.overlay_dir, exist_ok=True)
        _write_in_place(shadow, content)  # in place: a rename would detach the bind mounts
        if os.path.islink(path):
            target = os.path.realpath(path)
            if target != os.path.realpath(shadow):
                os.makedirs(os.path.dirname(target), exist_ok=True)
                _write_in_place(target, content)
            return
        if not os.path.ismount(path):
            from frakpy_guest import init

            if not os.path.exists(path):
                raise OSError(f"{path} is missing from the image: cannot bind-mount over it")
            init.bind_mount(shadow, path)

    def power_off(self) -> None:
        from frakpy_guest import init

        init.power_off()

    def mount(self, source: str, target: str, fstype: str | None, flags: int = 0,
              data: str | None = None) -> None:
        from frakpy_guest import init

        init.mount(source, target, fstype, flags, data)

    def umount(self, target: str) -> None:
        import ctypes

        from frakpy_guest import init

        if init.libc().umount2(target.encode(), MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err in (22, 2):  # EINVAL: not a mount point, ENOENT: gone
                return
            raise OSError(err, f"umount {target}: {os.strerror(err)}")

    async def start_ns_holder(self, reaper) -> int:  # type: ignore[no-untyped-def]
        from frakpy_guest import nsholder

        return await nsholder.start(reaper)


def _write_in_place(path: str, content: str) -> None:
    with open(path, "w") as f:
        f.write(content)
