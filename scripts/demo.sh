#!/usr/bin/env bash
# demo.sh — cs-journal-bouncer on a real LAPI, in a private network namespace.
# Needs root. Touches nothing outside its own namespaces: the bouncer, the
# LAPI (Debian's crowdsec, LAPI only) and the firewall all live in a fresh
# namespace; a "peer" namespace joined by veth sends the pings.
#
#   act 1  a ban added with cscli drops the banned peer, not the clean one
#   act 2  LAPI stopped, bouncer restarted: the bans are enforced from the journal
#   act 3  the firewall is wiped (tables restored empty, sets flushed) under the running bouncer, LAPI down: same PID, healed
#   act 4  the same with LAPI up
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${CSJB_BIN:-$here/bin/cs-journal-bouncer}

if [ "${CSJB_DEMO_INNER:-}" != 1 ]; then
  [ "$(id -u)" = 0 ] || { echo "demo: run as root (it creates network namespaces)" >&2; exit 1; }
  [ -x "$bin" ] || { echo "demo: $bin missing: run 'make demo'" >&2; exit 1; }
  bash "$here/testdata/lapi.sh" install >/dev/null   # needs the mirror: before leaving the host netns
  exec unshare --net env CSJB_DEMO_INNER=1 bash "$0" "$@"
fi

ip link set lo up
work=$(mktemp -d /tmp/csjb-demo.XXXXXX)
peer=csjb-demo-peer-$$
pid=
say()  { printf '\n\033[1m== %s\033[0m\n' "$*"; }
info() { printf '   %s\n' "$*"; }
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  [ -n "${LAPI_DIR:-}" ] && lapi_stop "$LAPI_DIR" >/dev/null 2>&1 || true
  ip netns delete "$peer" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=../testdata/lapi.sh
source "$here/testdata/lapi.sh"
say "starting a real LAPI (Debian's crowdsec, LAPI only) on 127.0.0.1 in a private namespace"
lapi_start >/dev/null
info "LAPI at $LAPI_URL"

say "a peer namespace over veth: 192.0.2.10 will be banned, 192.0.2.20 stays clean"
ip netns add "$peer"
ip link add csjb-demo type veth peer name csjb-demo-p netns "$peer"
ip addr add 192.0.2.1/24 dev csjb-demo && ip link set csjb-demo up
ip -n "$peer" addr add 192.0.2.10/24 dev csjb-demo-p
ip -n "$peer" addr add 192.0.2.20/24 dev csjb-demo-p
ip -n "$peer" link set lo up && ip -n "$peer" link set csjb-demo-p up
sleep 0.5
ping_from() {  # prints "answered" or "DROPPED"
  if ip netns exec "$peer" ping -n -q -c1 -W1 -I "$1" 192.0.2.1 >/dev/null 2>&1; then echo answered; else echo DROPPED; fi
}
show() { info "ping from 192.0.2.10 (banned): $(ping_from 192.0.2.10)   from 192.0.2.20 (clean): $(ping_from 192.0.2.20)"; }
show

cat > "$work/crowdsec-firewall-bouncer.yaml" <<YAML
mode: iptables
update_frequency: 1s
api_url: $LAPI_URL
api_key: \${DEMO_API_KEY}
log_mode: stdout
iptables_chains: [INPUT]
journal_path: $work/journal.db
YAML
export DEMO_API_KEY=$LAPI_KEY
start_bouncer() {
  "$bin" -c "$work/crowdsec-firewall-bouncer.yaml" >>"$work/bouncer.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do grep -q "journal enforced" "$work/bouncer.log" 2>/dev/null && return; sleep 0.05; done
  echo "bouncer did not start:"; tail "$work/bouncer.log"; exit 1
}
stop_bouncer() { kill "$pid"; wait "$pid" || true; pid=; }
wait_dropped() {
  for _ in $(seq 30); do [ "$(ping_from 192.0.2.10)" = DROPPED ] && return; sleep 0.2; done
  echo "the banned peer was never dropped"; tail -20 "$work/bouncer.log"; exit 1
}

say "act 1: start the bouncer with an upstream-style config, ban 192.0.2.10 with cscli"
start_bouncer
info "bouncer pid $pid"
lapi_cscli decisions add --ip 192.0.2.10 -d 4h --reason demo >/dev/null 2>&1
wait_dropped
show
info "kernel: set crowdsec-blacklists-0 holds $(ipset list -t crowdsec-blacklists-0 | sed -n 's/^Number of entries: //p') entry, CROWDSEC_CHAIN: $(iptables -S CROWDSEC_CHAIN | grep -c match-set) match rule"

say "act 2: stop LAPI, restart the bouncer: it enforces its journal without LAPI"
lapi_halt "$LAPI_DIR" >/dev/null
stop_bouncer
info "bouncer stopped (on_shutdown: remove): $(ping_from 192.0.2.10) — the host is open"
: >"$work/bouncer.log"
t0=$(date +%s%N)
start_bouncer
info "restarted with LAPI down: journal enforced in $(( ($(date +%s%N) - t0) / 1000000 )) ms (process start included)"
show
grep -m1 "LAPI unreachable" "$work/bouncer.log" >/dev/null 2>&1 || sleep 1.5
info "log: $(grep -m1 -o 'msg="LAPI unreachable[^"]*"' "$work/bouncer.log" || echo '(LAPI retry pending)')"

heal_act() {
  local before after t0 ms
  before=$(grep -c "repaired drift" "$work/bouncer.log" || true)
  # What a firewall reload does: the filter tables restored without our
  # chain and jumps, and every set emptied (sets referenced by rules cannot
  # be destroyed, and the bouncer puts its rules back within milliseconds).
  info "wiping: iptables-restore and ip6tables-restore of an empty filter table; ipset flush"
  t0=$(date +%s%N)
  printf '*filter\nCOMMIT\n' | iptables-restore
  printf '*filter\nCOMMIT\n' | ip6tables-restore
  ipset flush
  info "right after the wipe: $(ping_from 192.0.2.10)"
  for _ in $(seq 100); do
    after=$(grep -c "repaired drift" "$work/bouncer.log" || true)
    [ "$after" -gt "$before" ] && break
    sleep 0.02
  done
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  wait_dropped
  info "healed $ms ms after the wipe; bouncer pid $pid $(kill -0 "$pid" 2>/dev/null && echo '(same process, still running)')"
  info "$(grep "repaired drift" "$work/bouncer.log" | tail -1 | grep -o 'replayed=[0-9]* attempts=[0-9]* took=[^ ]*')"
  show
}

say "act 3: another program wipes the firewall under the running bouncer (LAPI still down)"
heal_act

say "act 4: LAPI back up, wipe again"
lapi_restart "$LAPI_DIR" >/dev/null
sleep 12   # let the anti-fight window (heal.fight_window, 10s) pass: a separate incident
heal_act

stop_bouncer
say "done: bouncer stopped cleanly, namespaces and LAPI removed"
