#!/usr/bin/env bash
# Install everything frakpy needs on a Debian 12 / Ubuntu host, idempotently:
# apt packages, the Python virtual environment at .venv, the guest kernel and image.
# Each step is skipped when already done (stamps and content-hash caches).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "frakpy set-up needs root (apt, VMs, network namespaces): run it with sudo" >&2
  exit 1
fi

PKGS=(
  python3 python3-venv python3-dev gcc make git ca-certificates
  qemu-system-x86 qemu-utils            # the VMs
  erofs-utils e2fsprogs                  # read-only image filesystems
  iproute2 iptables containernetworking-plugins   # pod networking (CNI plugins in /usr/lib/cni)
  busybox-static docker-registry apache2-utils openssl   # test images, local registry, htpasswd
  build-essential bc flex bison libelf-dev libssl-dev cpio xz-utils lz4   # guest kernel build
)
# guest kernel source: Debian 12's 6.1 (the tested one), else the distribution's linux-source
if apt-cache policy linux-source-6.1 2>/dev/null | grep -q 'Candidate: [0-9]'; then PKGS+=(linux-source-6.1); else PKGS+=(linux-source); fi
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "apt: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # the packaged registry service is not ours; tests start their own registries
  systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi

PY=${PYTHON:-python3}
stamp=.venv/.frakpy-deps
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "python: creating .venv and installing frakpy with its dependencies"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  echo "$want" > "$stamp"
fi

say "guest: kernel and root filesystem (cached by content hash)"
.venv/bin/python images/build.py

# A pod network for a node that has none yet: bridge frakpy0 + host-local IPAM on 10.91.0.0/16
# + portmap. Written only when /etc/cni/net.d holds no config (never overrides a cluster's CNI).
.venv/bin/python - <<'PY'
from frakpy.network.defaults import install_default
path = install_default("/etc/cni/net.d")
if path:
    print(f"==> cni: installed the default pod network {path}")
PY
