#!/usr/bin/env bash
# build-deb.sh VERSION — build dist/cs-journal-bouncer_<version>_<arch>.deb
# with dpkg-deb, Debian's own tool (in dpkg itself, on every Debian
# machine): no packager to pin or download, and dpkg-deb writes exactly the
# archive dpkg and apt read. The package is a prebuilt Go binary, a unit,
# a conffile and three maintainer scripts; debhelper's machinery would add
# nothing here but build dependencies.
#
# VERSION is `git describe --tags --always --dirty` (the Makefile's); it is
# made a valid Debian version: v1.2.3-4-gabc → 1.2.3+git4.gabc, a bare
# commit abc → 0.0~gitabc, -dirty → +dirty.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin

raw=${1:?usage: build-deb.sh VERSION}
debver() {
  local v=${1#v} dirty=
  case $v in *-dirty) dirty=+dirty; v=${v%-dirty} ;; esac
  if [[ $v =~ ^([0-9][0-9A-Za-z.]*)-([0-9]+)-g([0-9a-f]+)$ ]]; then
    v="${BASH_REMATCH[1]}+git${BASH_REMATCH[2]}.g${BASH_REMATCH[3]}"
  elif [[ $v =~ ^[0-9a-f]{4,40}$ ]]; then
    v="0.0~git$v"
  elif ! [[ $v =~ ^[0-9] ]]; then
    v="0.0~${v//[^A-Za-z0-9.+~]/.}"
  fi
  echo "$v$dirty"
}
version=$(debver "$raw")
arch=$(dpkg --print-architecture)
goarch=$(go env GOARCH)
name=cs-journal-bouncer
out=dist/${name}_${version}_${arch}.deb

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/root
mkdir -p "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" \
  "$root/etc/crowdsec/bouncers" "$root/usr/share/doc/$name"

# Static, stripped, no build paths: the same source builds the same binary.
CGO_ENABLED=0 GOARCH=$goarch go build -trimpath -ldflags "-s -w -X main.version=$raw" \
  -o "$root/usr/bin/$name" ./cmd/cs-journal-bouncer
install -m 0644 configs/cs-journal-bouncer.service "$root/lib/systemd/system/"

# The packaged config: the documented defaults, except two lines.
conf=$root/etc/crowdsec/bouncers/$name.yaml
awk '
  /^api_key: \$\{API_KEY\}$/ {
    print "# Set by the package in cs-journal-bouncer.yaml.local (migrated from"
    print "# crowdsec-firewall-bouncer, or registered with cscli); or here."
    print "api_key: \"\""; n++; next }
  /^on_shutdown: remove$/ {
    print "# Packaged: keep. systemctl restart and package upgrades then leave every"
    print "# ban enforced throughout (the next start re-enforces the journal without"
    print "# waiting for LAPI); removing the package removes them (prerm runs"
    print "# cs-journal-bouncer cleanup)."
    print "on_shutdown: keep"; n++; next }
  { print }
  END { if (n != 2) { print "build-deb: configs/cs-journal-bouncer.yaml changed: update build-deb.sh" > "/dev/stderr"; exit 1 } }
' configs/cs-journal-bouncer.yaml >"$conf"
chmod 0600 "$conf"
echo "/etc/crowdsec/bouncers/$name.yaml" >"$root/DEBIAN/conffiles"

install -m 0644 README.md "$root/usr/share/doc/$name/README.md"
install -m 0755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm "$root/DEBIAN/"
install -D -m 0755 packaging/deb/takeover "$root/usr/lib/$name/takeover"

size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
# No Conflicts:/Breaks:/Replaces: on crowdsec-firewall-bouncer(-iptables,
# -nftables), on purpose. With either relation, apt removes that package in
# a dpkg run of its own before it unpacks ours (measured with apt 2.6:
# "dpkg --remove crowdsec-firewall-bouncer", then "dpkg --unpack" of ours),
# so its prerm stops it the usual way, it deletes its rules and sets on
# SIGTERM, and the host is open until ours has started and pulled LAPI
# (about 2 s measured). Nothing of ours can run before that prerm. Instead
# postinst takes over: it stops the old bouncer with SIGKILL (its bans stay
# in the kernel), disables and masks it, starts ours, and removes the old rules and
# sets once ours enforces every ban they hold (packaging/deb/takeover). The
# two never run together; the old package stays installed, stopped and
# masked, until the administrator removes it, which then changes nothing.
cat >"$root/DEBIAN/control" <<CONTROL
Package: $name
Version: $version
Architecture: $arch
Maintainer: cs-journal-bouncer developers <cs-journal-bouncer@users.noreply.github.com>
Installed-Size: $size
Depends: iptables | nftables, ipset | nftables
Recommends: crowdsec
Provides: crowdsec-firewall-bouncer
Section: net
Priority: optional
Homepage: https://github.com/cs-journal-bouncer/cs-journal-bouncer
Description: CrowdSec firewall bouncer with an on-disk journal and self-heal
 Enforces CrowdSec LAPI decisions with nftables or iptables/ipset. Every batch of
 decisions is journaled to disk before the kernel sees it, enforced at boot
 before and without LAPI, and repaired in-process when another program
 flushes its rules or sets. Reads crowdsec-firewall-bouncer.yaml unchanged
 and migrates it on install.
CONTROL
( cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum ) >"$root/DEBIAN/md5sums"

mkdir -p dist
rm -f "dist/${name}_"*"_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$out" >/dev/null
echo "$out"
