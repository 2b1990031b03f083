"""Container security settings, pod PID sharing, OOM and log framing in real pod VMs."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from frakpy.cri.client import CRIError
from frakpy.cri.proto import api_pb2 as pb

from . import test_containers as tc
from .test_containers import container_config, create, pod_config, wait_state

pytestmark = tc.pytestmark
env = tc.env  # the module fixture: registry, pushed busybox, daemon, pulled image

BLINE = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z (stdout|stderr) ([PF]) (.*)$", re.S)

# containerd's default set: CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP
# NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP
DEFAULT_CAPS = 0xA80425FB
NET_RAW = 1 << 13


def run_pod(c, name: str, work: Path, **kw) -> tuple[str, pb.PodSandboxConfig]:
    sb_cfg = pod_config(name, work / f"logs-{name}")
    for k, v in kw.items():
        getattr(sb_cfg, k).CopyFrom(v)
    pod_id = c.call(c.runtime.RunPodSandbox, pb.RunPodSandboxRequest(config=sb_cfg)).pod_sandbox_id
    return pod_id, sb_cfg


def start_sleeper(c, pod_id, sb_cfg, name, image, **kw) -> str:
    cid = create(c, pod_id, sb_cfg, container_config(name, image, ["sleep", "3600"], **kw))
    c.call(c.runtime.StartContainer, pb.StartContainerRequest(container_id=cid))
    assert wait_state(c, cid, pb.CONTAINER_RUNNING).state == pb.CONTAINER_RUNNING
    return cid


def exec_sync(c, cid: str, cmd: list[str], timeout: int = 30) -> pb.ExecSyncResponse:
    return c.call(c.runtime.ExecSync, pb.ExecSyncRequest(container_id=cid, cmd=cmd, timeout=timeout))


def sc(**kw) -> pb.LinuxContainerConfig:
    return pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(**kw))


def cap_eff(out: bytes) -> int:
    m = re.search(rb"CapEff:\s*([0-9a-f]+)", out)
    assert m, out
    return int(m.group(1), 16)


def stop_remove_pod(c, pod_id: str) -> None:
    c.call(c.runtime.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    c.call(c.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


def read_log_bytes(path: Path, done, timeout: float = 20.0) -> list[tuple[bytes, bytes, bytes]]:
    deadline = time.monotonic() + timeout
    while True:
        raw = path.read_bytes() if path.exists() else b""
        lines = [x for x in raw.split(b"\n") if x] if raw else []
        if (raw.endswith(b"\n") and done(lines)) or time.monotonic() > deadline:
            out = []
            for line in lines:
                m = BLINE.match(line)
                assert m, f"not a CRI log line: {line[:200]!r}"
                out.append(m.groups())
            return out
        time.sleep(0.2)


def test_users_groups_readonly_caps(env):
    d, image, work = env
    with d.client(timeout=120) as c:
        pod_id, sb_cfg = run_pod(c, "users", work)

        cid = start_sleeper(c, pod_id, sb_cfg, "uid", image, linux=sc(run_as_user=pb.Int64Value(value=1234)))
        r = exec_sync(c, cid, ["id", "-u"])
        assert r.exit_code == 0 and r.stdout == b"1234\n", r
        # a non-root user has no effective capabilities
        assert cap_eff(exec_sync(c, cid, ["grep", "CapEff", "/proc/self/status"]).stdout) == 0

        cid = start_sleeper(c, pod_id, sb_cfg, "uname", image, linux=sc(run_as_username="frak"))
        r = exec_sync(c, cid, ["id"])
        assert r.exit_code == 0, r
        assert b"uid=1234" in r.stdout and b"gid=1234" in r.stdout, r.stdout
        r = exec_sync(c, cid, ["id", "-u"])
        assert r.stdout == b"1234\n", r

        cid = start_sleeper(c, pod_id, sb_cfg, "groups", image, linux=sc(
            run_as_user=pb.Int64Value(value=1234), run_as_group=pb.Int64Value(value=33),
            supplemental_groups=[4000, 65534]))
        r = exec_sync(c, cid, ["id", "-g"])
        assert r.stdout == b"33\n", r
        groups = set(exec_sync(c, cid, ["id", "-G"]).stdout.split())
        assert {b"33", b"4000", b"65534"} <= groups, groups

        cid = start_sleeper(c, pod_id, sb_cfg, "ro", image, linux=sc(readonly_rootfs=True))
        r = exec_sync(c, cid, ["touch", "/x"])
        assert r.exit_code != 0, r
        r = exec_sync(c, cid, ["sh", "-c", "awk '$2 == \"/\" {print $4}' /proc/mounts"])
        assert r.stdout.split(b"\n")[-2].split(b",")[0] == b"ro", r.stdout
        # the default rootfs is writable
        cid_rw = start_sleeper(c, pod_id, sb_cfg, "rw", image)
        assert exec_sync(c, cid_rw, ["touch", "/x"]).exit_code == 0

        # capabilities: default set, NET_RAW dropped, all dropped
        assert cap_eff(exec_sync(c, cid_rw, ["grep", "CapEff", "/proc/self/status"]).stdout) == DEFAULT_CAPS
        cid = start_sleeper(c, pod_id, sb_cfg, "nonetraw", image, linux=sc(
            capabilities=pb.Capability(drop_capabilities=["NET_RAW"])))
        assert cap_eff(exec_sync(c, cid, ["grep", "CapEff", "/proc/self/status"]).stdout) == DEFAULT_CAPS & ~NET_RAW
        cid = start_sleeper(c, pod_id, sb_cfg, "nocaps", image, linux=sc(
            capabilities=pb.Capability(drop_capabilities=["ALL"])))
        out = exec_sync(c, cid, ["grep", "Cap", "/proc/self/status"]).stdout
        assert cap_eff(out) == 0, out
        assert re.search(rb"CapPrm:\s*0+\n", out), out
        stop_remove_pod(c, pod_id)


def test_user_lookup(env):
    d, image, work = env
    with d.client(timeout=120) as c:
        pod_id, sb_cfg = run_pod(c, "lookup", work)
        # a uid found in /etc/passwd takes its primary group from there, an unknown one gets gid 0
        cid = start_sleeper(c, pod_id, sb_cfg, "known", image, linux=sc(run_as_user=pb.Int64Value(value=1234)))
        assert exec_sync(c, cid, ["id", "-g"]).stdout == b"1234\n"
        assert exec_sync(c, cid, ["sh", "-c", "echo $HOME"]).stdout == b"/home/frak\n"
        cid = start_sleeper(c, pod_id, sb_cfg, "unknown", image, linux=sc(run_as_user=pb.Int64Value(value=4321)))
        assert exec_sync(c, cid, ["id", "-u"]).stdout == b"4321\n"
        assert exec_sync(c, cid, ["id", "-g"]).stdout == b"0\n"
        cid = start_sleeper(c, pod_id, sb_cfg, "www", image, linux=sc(run_as_username="www-data"))
        r = exec_sync(c, cid, ["id"])
        assert b"uid=33(www-data)" in r.stdout and b"gid=33(www-data)" in r.stdout, r.stdout
        # a name the image does not know is refused
        with pytest.raises(CRIError) as exc:
            cid = create(c, pod_id, sb_cfg, container_config("ghost", image, ["true"],
                                                             linux=sc(run_as_username="ghost")))
            c.call(c.runtime.StartContainer, pb.StartContainerRequest(container_id=cid))
        assert "'ghost' not found" in exc.value.details, (exc.value.code, exc.value.details)
        stop_remove_pod(c, pod_id)


def test_pod_pid_namespace(env):
    d, image, work = env

    def sees_other(c, cid: str) -> bool:
        r = exec_sync(c, cid, ["sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"])
        return b"sleep 4242" in r.stdout

    with d.client(timeout=120) as c:
        pod_ns = pb.NamespaceOption(pid=pb.POD)
        pod_id, sb_cfg = run_pod(c, "pidpod", work, linux=pb.LinuxPodSandboxConfig(
            security_context=pb.LinuxSandboxSecurityContext(namespace_options=pod_ns)))
        a_cfg = container_config("a", image, ["sleep", "4242"], linux=sc(namespace_options=pod_ns))
        a = create(c, pod_id, sb_cfg, a_cfg)
        c.call(c.runtime.StartContainer, pb.StartContainerRequest(container_id=a))
        b = start_sleeper(c, pod_id, sb_cfg, "b", image, linux=sc(namespace_options=pod_ns))
        assert wait_state(c, a, pb.CONTAINER_RUNNING).state == pb.CONTAINER_RUNNING
        assert sees_other(c, b)
        r = exec_sync(c, b, ["ps"])
        assert b"sleep 4242" in r.stdout, r.stdout
        stop_remove_pod(c, pod_id)

        ctr_ns = pb.NamespaceOption(pid=pb.CONTAINER)
        pod_id, sb_cfg = run_pod(c, "pidctr", work, linux=pb.LinuxPodSandboxConfig(
            security_context=pb.LinuxSandboxSecurityContext(namespace_options=ctr_ns)))
        a_cfg = container_config("a", image, ["sleep", "4242"], linux=sc(namespace_options=ctr_ns))
        a = create(c, pod_id, sb_cfg, a_cfg)
        c.call(c.runtime.StartContainer, pb.StartContainerRequest(container_id=a))
        b = start_sleeper(c, pod_id, sb_cfg, "b", image, linux=sc(namespace_options=ctr_ns))
        assert wait_state(c, a, pb.CONTAINER_RUNNING).state == pb.CONTAINER_RUNNING
        assert not sees_other(c, b)
        # its own sleep is pid 1 of its namespace
        assert exec_sync(c, b, ["cat", "/proc/1/cmdline"]).stdout.startswith(b"sleep\x003600")
        assert sees_other(c, a) is True  # a sees itself
        stop_remove_pod(c, pod_id)


def test_oom_killed(env):
    d, image, work = env
    with d.client(timeout=120) as c:
        pod_id, sb_cfg = run_pod(c, "oom", work)
        limit = 32 * 1024 * 1024
        linux = pb.LinuxContainerConfig(resources=pb.LinuxContainerResources(
            memory_limit_in_bytes=limit, memory_swap_limit_in_bytes=limit))
        # the shell keeps the whole command substitution in memory
        cid = create(c, pod_id, sb_cfg, container_config(
            "hog", image, ["sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo ${#x}"],
            linux=linux))
        c.call(c.runtime.StartContainer, pb.StartContainerRequest(container_id=cid))
        st = wait_state(c, cid, pb.CONTAINER_EXITED, timeout=120)
        assert st.state == pb.CONTAINER_EXITED, st
        assert st.reason == "OOMKilled", st
        assert st.exit_code == 137, st
        stop_remove_pod(c, pod_id)


def test_log_framing(env):
    d, image, work = env
    with d.client(timeout=120) as c:
        pod_id, sb_cfg = run_pod(c, "logs", work)
        log_dir = work / "logs-logs"

        cid = create(c, pod_id, sb_cfg, container_config("nonl", image, ["sh", "-c", "echo one; printf two"]))
        c.call(c.runtime.StartContainer, pb.StartContainerRequest(container_id=cid))
        assert wait_state(c, cid, pb.CONTAINER_EXITED).exit_code == 0
        lines = read_log_bytes(log_dir / "nonl/0.log", lambda ls: len(ls) >= 2)
        assert lines == [(b"stdout", b"F", b"one"), (b"stdout", b"F", b"two")], lines

        n = 40000
        cid = create(c, pod_id, sb_cfg, container_config(
            "long", image, ["sh", "-c", f"head -c {n} /dev/zero | tr '\\0' a; echo; echo end"]))
        c.call(c.runtime.StartContainer, pb.StartContainerRequest(container_id=cid))
        assert wait_state(c, cid, pb.CONTAINER_EXITED).exit_code == 0
        lines = read_log_bytes(log_dir / "long/0.log", lambda ls: any(x.endswith(b" F end") for x in ls))
        assert lines[-1] == (b"stdout", b"F", b"end"), lines[-1]
        body = lines[:-1]
        assert len(body) >= 3, [(s, t, len(x)) for s, t, x in body]
        assert all(t == b"P" for _, t, _ in body[:-1]) and body[-1][1] == b"F", [(t, len(x)) for _, t, x in body]
        assert all(len(x) <= 16 * 1024 for _, _, x in body), [len(x) for _, _, x in body]
        assert b"".join(x for _, _, x in body) == b"a" * n

        # the same long line written with its newline in one write(2)
        cid = create(c, pod_id, sb_cfg, container_config("long1", image, ["sh", "-c", (
            f"head -c {n} /dev/zero | tr '\\0' b >/tmp/l; echo >>/tmp/l; "
            f"dd if=/tmp/l bs={n + 1} count=1 2>/dev/null; echo end")]))
        c.call(c.runtime.StartContainer, pb.StartContainerRequest(container_id=cid))
        assert wait_state(c, cid, pb.CONTAINER_EXITED).exit_code == 0
        lines = read_log_bytes(log_dir / "long1/0.log", lambda ls: any(x.endswith(b" F end") for x in ls))
        assert lines[-1] == (b"stdout", b"F", b"end"), lines[-1]
        body = lines[:-1]
        assert [t for _, t, _ in body] == [b"P", b"P", b"F"], [(t, len(x)) for _, t, x in body]
        assert b"".join(x for _, _, x in body) == b"b" * n

        # binary output: every byte value, newlines included, keeps the file well-formed
        cid = create(c, pod_id, sb_cfg, container_config(
            "bin", image, ["sh", "-c", "head -c 65536 /dev/urandom; printf '\\0\\377\\r\\n'; echo done"]))
        c.call(c.runtime.StartContainer, pb.StartContainerRequest(container_id=cid))
        assert wait_state(c, cid, pb.CONTAINER_EXITED).exit_code == 0
        lines = read_log_bytes(log_dir / "bin/0.log", lambda ls: any(x.endswith(b" F done") for x in ls))
        assert lines[-1] == (b"stdout", b"F", b"done")
        assert lines[-2][2].endswith(b"\x00\xff\r"), lines[-2]
        assert all(s == b"stdout" for s, _, _ in lines)
        stop_remove_pod(c, pod_id)
