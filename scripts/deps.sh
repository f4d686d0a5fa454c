#!/usr/bin/env bash
# deps.sh — install what the build, the tests and the demo need on a fresh
# Debian 12 machine (as root): kernel tools, ping, debootstrap (the package
# tests' Debian root), Go modules, and Debian's
# crowdsec (extracted, not installed) for a real LAPI. Idempotent and quiet
# when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pair in iptables:iptables ipset:ipset nft:nftables ip:iproute2 ping:iputils-ping \
            curl:curl unshare:util-linux systemd-analyze:systemd \
            debootstrap:debootstrap nsenter:util-linux dpkg-deb:dpkg; do
  cmd=${pair%%:*} pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
ldconfig -p | grep -q 'libsqlite3\.so\.0' || need+=(libsqlite3-0)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "deps: missing ${need[*]}; run as root (apt-get install -y ${need[*]})" >&2
    exit 1
  fi
  echo "deps: apt-get install ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "${need[@]}" >/dev/null 2>&1 || {
    apt-get update -q >/dev/null
    apt-get install -y -q "${need[@]}" >/dev/null
  }
fi

command -v go >/dev/null 2>&1 || [ -x /usr/local/go/bin/go ] || {
  echo "deps: Go 1.26 is required (go not found)" >&2; exit 1; }
export PATH=$PATH:/usr/local/go/bin
go mod download

# Debian's crowdsec 1.4.6, extracted into a cache dir (no system install).
bash testdata/lapi.sh install >/dev/null
