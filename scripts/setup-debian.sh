#!/usr/bin/env bash
# Installs what Weft's build, tests, lab and benchmarks need on Debian 12 (run as root).
# Idempotent: does nothing when everything is already there.
set -euo pipefail

packages=(
  build-essential pkg-config        # crates that compile C
  protobuf-compiler libprotobuf-dev # etcd-client's build
  iproute2 util-linux procps        # ip, nsenter/unshare, sysctl
  nftables iptables                 # Weft's table; the reference portmap uses iptables
  etcd-server etcd-client           # the cluster store
  containernetworking-plugins       # reference CNI plugins in /usr/lib/cni
  podman crun busybox-static        # a real CNI runtime and a rootfs without a registry
  iperf3 iputils-ping jq curl       # data path checks; the lab reads weftd's metrics
  openssl                           # weft-api's TLS test makes its certificates
)

if [ "$(id -u)" != 0 ]; then
  echo "setup-debian.sh: run as root (it installs Debian packages)" >&2
  exit 1
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
  echo "setup-debian.sh: cargo is missing; install Rust (rustup) first" >&2
  exit 1
fi
echo "setup-debian.sh: all dependencies present"
