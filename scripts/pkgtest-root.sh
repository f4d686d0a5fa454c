#!/usr/bin/env bash
# pkgtest-root.sh — build (once) the Debian 12 root the package tests boot
# with systemd as PID 1, and print its path.
#
# The root is debootstrapped (--variant=minbase) from the mirror this
# machine's apt already uses, then gets Debian's crowdsec and
# crowdsec-firewall-bouncer installed the way a user would, offline-safe:
# crowdsec's postinst registers with CrowdSec's online API unless
# /etc/crowdsec/online_api_credentials.yaml exists and is non-empty, so that
# file is written first, and crowdsec is then configured without the online
# API at all (the test machine has no internet, only the Debian mirror).
#
# The result is cached under $PKGTEST_CACHE (default
# /var/cache/cs-journal-bouncer-test), keyed by a hash of this script: a
# changed package list or recipe builds a new root, an unchanged one is
# reused in well under a second. Tests never write into it: each boots an
# overlay (or a copy) of it.
set -euo pipefail

cache=${PKGTEST_CACHE:-/var/cache/cs-journal-bouncer-test}
suite=bookworm
base_pkgs=systemd,systemd-sysv,dbus,iptables,ipset,nftables,ca-certificates
# Installed one after the other: the bouncer's postinst registers its key
# directly only once crowdsec is configured.
extra_pkgs="crowdsec crowdsec-firewall-bouncer"
key=$(sha256sum "$0" | cut -c1-16)
root=$cache/root-$key

log() { echo "pkgtest-root: $*" >&2; }

if [ -f "$root/.complete" ]; then
  echo "$root"
  exit 0
fi
[ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }
command -v debootstrap >/dev/null || { log "debootstrap missing (scripts/deps.sh installs it)"; exit 1; }
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock -w 900 9 || { log "timed out waiting for $cache/.lock"; exit 1; }
if [ -f "$root/.complete" ]; then echo "$root"; exit 0; fi

# The mirror apt on this machine is configured with (deb822 or one-line).
mirror=$(apt-get indextargets --format '$(REPO_URI)' 'Codename: bookworm' 2>/dev/null \
  | grep -m1 '/debian/$' || true)
mirror=${mirror:-http://deb.debian.org/debian/}

# Roots of older recipes are of no further use.
find "$cache" -maxdepth 1 -name 'root-*' ! -name "root-$key" -exec rm -rf {} +
tmp=$root.tmp
rm -rf "$tmp"
log "debootstrap $suite from $mirror into $tmp (about a minute)"
t0=$(date +%s)
debootstrap --variant=minbase --include="$base_pkgs" "$suite" "$tmp" "$mirror" >"$cache/debootstrap.log" 2>&1 \
  || { tail -20 "$cache/debootstrap.log" >&2; log "debootstrap failed"; exit 1; }

cp /etc/resolv.conf "$tmp/etc/resolv.conf" 2>/dev/null || true
echo "deb $mirror $suite main" >"$tmp/etc/apt/sources.list"
echo pkgtest >"$tmp/etc/hostname"
# crowdsec's postinst: a non-empty file here means "do not register online".
mkdir -p "$tmp/etc/crowdsec"
echo '# no online API: offline test root' >"$tmp/etc/crowdsec/online_api_credentials.yaml"

in_root() { chroot "$tmp" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LANG=C "$@"; }
mount -t proc proc "$tmp/proc"
trap 'umount "$tmp/proc" 2>/dev/null || true' EXIT
in_root apt-get update -q >>"$cache/debootstrap.log" 2>&1
for p in $extra_pkgs; do
  in_root apt-get install -y -q --no-install-recommends "$p" >>"$cache/debootstrap.log" 2>&1 \
    || { tail -30 "$cache/debootstrap.log" >&2; log "apt-get install $p failed"; exit 1; }
done
umount "$tmp/proc"
trap - EXIT
# debootstrap leaves policy-rc.d exiting 101, which kept the maintainer
# scripts above from starting services in the chroot (no systemd runs
# there). Under the test's systemd it would keep every package script from
# starting or stopping anything, and a package test would prove nothing.
rm -f "$tmp/usr/sbin/policy-rc.d"

# LAPI only on loopback, no online API client: crowdsec would otherwise
# try CAPI at every start. The agent keeps running (it reads no logs here).
sed -i '/online_client:/,/credentials_path:/ s|^\(\s*\)credentials_path:.*|\1# credentials_path: disabled for the offline test root|' \
  "$tmp/etc/crowdsec/config.yaml"
# No udev and no terminals here: the getty for the kernel's serial console
# would wait 90 s for a device that never appears, and boot would hang in
# "starting".
for u in getty.target serial-getty@.service console-getty.service; do
  ln -sf /dev/null "$tmp/etc/systemd/system/$u"
done
in_root apt-get clean
touch "$tmp/.complete"
rm -rf "$root" && mv "$tmp" "$root"
log "root ready in $(( $(date +%s) - t0 )) s: $root"
echo "$root"
