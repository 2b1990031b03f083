"""SetupSandbox and Shutdown: turning a generic VM into one pod's VM, and ending it."""

import logging
import socket
import sys

from frakpy.agent.protocol import agent_pb2 as pb
from frakpy.agent.protocol.ttrpc import Code, ServerCall, TTRPCError
from frakpy_guest.services import AgentState

log = logging.getLogger("frakpy_guest.sandbox")

MAX_RNG_SEED = 4096
MAX_HOSTNAME = 64  # HOST_NAME_MAX
LOCALHOST_LINES = ("127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback")


def _invalid(message: str) -> TTRPCError:
    return TTRPCError(Code.INVALID_ARGUMENT, message)


def _is_ip(text: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, text)
            return True
        except (OSError, ValueError):
            pass
    return False


def _is_word(text: str) -> bool:
    return bool(text) and text.isprintable() and not any(c.isspace() for c in text)


def _check_hostname(name: str) -> None:
    if len(name.encode()) > MAX_HOSTNAME:
        raise _invalid(f"hostname {name!r} is longer than {MAX_HOSTNAME} bytes")
    for label in name.split("."):
        if not label or not all(c.isascii() and (c.isalnum() or c in "-_") for c in label):
            raise _invalid(f"hostname {name!r} is not a valid host name")


def resolv_conf(dns: pb.DNSConfig) -> str:
    lines = []
    for server in dns.servers:
        if not _is_ip(server):
            raise _invalid(f"DNS server {server!r} is not an IP address")
        lines.append(f"nameserver {server}")
    for field, words in (("search", dns.searches), ("options", dns.options)):
        for w in words:
            if not _is_word(w):
                raise _invalid(f"DNS {field} entry {w!r} is empty or contains whitespace")
        if words:
            lines.append(f"{field} {' '.join(words)}")
    return "".join(line + "\n" for line in lines)


def hosts_file(entries) -> str:  # type: ignore[no-untyped-def]
    lines = list(LOCALHOST_LINES)
    for entry in entries:
        if not _is_ip(entry.ip):
            raise _invalid(f"hosts entry IP {entry.ip!r} is not an IP address")
        if not entry.names or not all(_is_word(n) for n in entry.names):
            raise _invalid(f"hosts entry for {entry.ip} needs names without whitespace")
        lines.append(f"{entry.ip}\t{' '.join(entry.names)}")
    return "".join(line + "\n" for line in lines)


def _os_error(what: str, exc: OSError) -> TTRPCError:
    code = Code.PERMISSION_DENIED if isinstance(exc, PermissionError) else Code.INTERNAL
    return TTRPCError(code, f"{what}: {exc}")


class SetupSandbox:
    """Idempotent for the same sandbox id; a VM serves exactly one sandbox in its life."""

    def __init__(self, state: AgentState) -> None:
        self.state = state

    async def __call__(self, req: pb.SetupSandboxRequest, call: ServerCall) -> pb.SetupSandboxResponse:
        state = self.state
        if not _is_word(req.sandbox_id) or "/" in req.sandbox_id:
            raise _invalid(f"sandbox id {req.sandbox_id!r} is empty or malformed")
        if state.sandbox_id and state.sandbox_id != req.sandbox_id:
            raise TTRPCError(Code.FAILED_PRECONDITION,
                             f"this VM already belongs to sandbox {state.sandbox_id}, not {req.sandbox_id}")
        if state.shutting_down:
            raise TTRPCError(Code.FAILED_PRECONDITION, "the VM is shutting down")
        if req.hostname:
            _check_hostname(req.hostname)
        if len(req.rng_seed) > MAX_RNG_SEED:
            raise _invalid(f"rng_seed is {len(req.rng_seed)} bytes, at most {MAX_RNG_SEED} are accepted")
        if req.realtime_ns < 0:
            raise _invalid("realtime_ns must not be negative")
        resolv = resolv_conf(req.dns) if req.HasField("dns") else None
        hosts = hosts_file(req.hosts) if req.hosts else None

        system = state.system
        resp = pb.SetupSandboxResponse()
        # entropy and clock first: anything after them may already want good randomness/time
        if req.rng_seed:
            try:
                resp.entropy_bits_credited = system.add_entropy(bytes(req.rng_seed))
            except OSError as exc:
                raise _os_error("crediting the RNG seed (RNDADDENTROPY)", exc) from exc
            # a VM restored from a template shares the template's Python `random` state: fork it
            random_mod = sys.modules.get("random")
            if random_mod is not None:
                random_mod.seed(bytes(req.rng_seed))
        if req.realtime_ns:
            try:
                system.set_realtime_ns(req.realtime_ns)
                resp.clock_set = True
            except OSError as exc:
                raise _os_error("setting the realtime clock", exc) from exc
        steps = []
        if req.hostname:
            steps.append(("setting the hostname", system.set_hostname, (req.hostname,)))
        if resolv is not None:
            steps.append(("writing /etc/resolv.conf", system.write_etc_file, ("resolv.conf", resolv)))
        if hosts is not None:
            steps.append(("writing /etc/hosts", system.write_etc_file, ("hosts", hosts)))
        for what, fn, args in steps:
            try:
                fn(*args)
            except OSError as exc:
                raise _os_error(what, exc) from exc
        state.sandbox_id = req.sandbox_id
        log.debug("sandbox %s set up (clock %s, %d entropy bits)", req.sandbox_id,
                 "set" if resp.clock_set else "kept", resp.entropy_bits_credited)
        return resp


class Shutdown:
    """Answers first, then powers off once the answer was handed to the transport."""

    def __init__(self, state: AgentState) -> None:
        self.state = state

    async def __call__(self, req: pb.ShutdownRequest, call: ServerCall) -> pb.ShutdownResponse:
        self.state.shutting_down = True
        log.info("shutdown requested: syncing, then powering off")
        try:
            self.state.system.sync()
        except OSError as exc:
            log.warning("sync failed: %s", exc)
        call.after_reply(self._power_off)
        return pb.ShutdownResponse()

    def _power_off(self) -> None:
        try:
            self.state.system.power_off()
        except OSError as exc:
            log.error("power off failed: %s", exc)
