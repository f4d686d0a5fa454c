#!/usr/bin/env bash
# lapi.sh - run a REAL CrowdSec Local API (LAPI only: no agent, no CAPI, no hub)
# on 127.0.0.1 in a throwaway directory, for integration tests and demos.
# Debian 12 (bookworm) ships crowdsec 1.4.6; root is needed only for apt-get.
#
# As a command:
#   bash lapi.sh install        # only make crowdsec+cscli available (needs Debian's mirror:
#                               # run it before entering a network namespace)
#   bash lapi.sh start          # prints LAPI_URL=, LAPI_KEY=, LAPI_PORT=, LAPI_PID=, LAPI_DIR=, CSCLI= lines
#   bash lapi.sh halt DIR       # stop the LAPI started in DIR, keep DIR (config, key, database)
#   bash lapi.sh restart DIR    # start it again on the same port with the same key and data
#   bash lapi.sh stop DIR       # stop the LAPI started in DIR, remove DIR
#   bash lapi.sh cscli DIR ARGS...                                  # cscli bound to that LAPI
#   bash lapi.sh add-decision DIR ORIGIN SCOPE VALUE DURATION [TYPE] [SCENARIO]
# As a library:
#   source lapi.sh; lapi_start; lapi_cscli decisions add --ip 1.2.3.4 -d 4h; ...; lapi_stop
#
# Knobs (all optional):
#   LAPI_PORT         fixed port (default: random free port 20000-39999, retried on clash)
#   LAPI_DIR          work dir (default: mktemp -d /tmp/crowdsec-lapi.XXXXXX)
#   LAPI_KEY          bouncer API key to register (default: 32 random hex chars)
#   LAPI_BOUNCER      bouncer name (default: test-bouncer)
#   LAPI_KEEP_DIR=1   lapi_stop keeps the dir (logs in DIR/log, sqlite in DIR/data)
#   LAPI_INSTALL      auto (default: crowdsec on PATH, else extract the .deb)
#                     extract (never touch the system: apt-get download + dpkg-deb -x)
#                     apt (system install; pre-seeds the CAPI file so the offline postinst succeeds)
#   LAPI_CACHE        where the .deb is extracted (default: /tmp/crowdsec-deb-cache)

#
# Setup is split from launch so a
# LAPI can be halted and restarted on the same port, key and database (a bouncer must be
# able to reconnect without its pull state being reset), and exposed cscli/add-decision
# as commands for the Go test harness (internal/testenv/lapi.go) and the demo.

_lapi_log() { echo "lapi: $*" >&2; }

_lapi_apt() {   # apt-get install with one retry after 'apt-get update'
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null 2>&1 && return 0
  apt-get update -q >/dev/null 2>&1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
}

_lapi_have_sqlite() {
  local ldc
  ldc=$(command -v ldconfig || echo /sbin/ldconfig)
  "$ldc" -p 2>/dev/null | grep -q 'libsqlite3\.so\.0'
}

lapi_install() {
  local mode=${LAPI_INSTALL:-auto} cache=${LAPI_CACHE:-/tmp/crowdsec-deb-cache}
  if [ -n "${CROWDSEC_BIN_DIR:-}" ] && [ -x "$CROWDSEC_BIN_DIR/crowdsec" ]; then return 0; fi
  command -v curl >/dev/null || _lapi_apt curl || { _lapi_log "cannot install curl"; return 1; }
  if [ "$mode" != extract ] && command -v crowdsec >/dev/null && command -v cscli >/dev/null; then
    CROWDSEC_BIN_DIR=$(dirname "$(command -v crowdsec)"); return 0
  fi
  if [ "$mode" = apt ]; then
    # Debian's postinst runs `cscli capi register` (needs internet) unless this file is non-empty.
    mkdir -p /etc/crowdsec
    [ -s /etc/crowdsec/online_api_credentials.yaml ] \
      || echo '# CAPI disabled: offline machine' > /etc/crowdsec/online_api_credentials.yaml
    _lapi_apt crowdsec || { dpkg --configure -a >/dev/null 2>&1; dpkg -s crowdsec 2>/dev/null | grep -q 'ok installed'; } \
      || { _lapi_log "apt-get install crowdsec failed"; return 1; }
    CROWDSEC_BIN_DIR=/usr/bin; return 0
  fi
  # extract: binaries only, no postinst, no /etc or /var changes.
  # crowdsec links libsqlite3 dynamically: check it even when the cache is warm.
  _lapi_have_sqlite || _lapi_apt libsqlite3-0 \
    || { _lapi_log "cannot install libsqlite3-0 (no network? run 'lapi.sh install' outside the netns)"; return 1; }
  mkdir -p "$cache" || return 1
  # Test binaries of several packages run at once: one downloads, the others
  # wait for it instead of deleting each other's .deb.
  (
    flock -w 600 9 || { _lapi_log "timed out waiting for $cache/.lock"; exit 1; }
    [ -x "$cache/root/usr/bin/crowdsec" ] && exit 0
    rm -f "$cache"/crowdsec_*.deb
    ( cd "$cache" && { apt-get download crowdsec >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1; apt-get download crowdsec >/dev/null; }; } ) \
      || { _lapi_log "apt-get download crowdsec failed (no network? run 'lapi.sh install' outside the netns)"; exit 1; }
    # extract beside and rename, so a reader that skipped the lock never sees half a tree
    rm -rf "$cache/root.tmp" && dpkg-deb -x "$cache"/crowdsec_*.deb "$cache/root.tmp" \
      || { _lapi_log "dpkg-deb -x failed"; exit 1; }
    rm -rf "$cache/root" && mv "$cache/root.tmp" "$cache/root"
  ) 9>"$cache/.lock" || return 1
  CROWDSEC_BIN_DIR=$cache/root/usr/bin
}

# cscli bound to the running LAPI (goes through the API with the machine credentials)
lapi_cscli() { "$CROWDSEC_BIN_DIR/cscli" -c "$LAPI_DIR/config.yaml" "$@"; }

# _lapi_alive PID: running, not a zombie waiting for a parent that is not us to reap it
_lapi_alive() {
  kill -0 "$1" 2>/dev/null || return 1
  [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]
}

_lapi_port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

_lapi_write_config() {   # DIR PORT
  local d=$1 port=$2
  cat > "$d/config.yaml" <<CFG
common:
  daemonize: false
  log_media: file
  log_dir: $d/log/
  log_level: info
  working_dir: .
config_paths:
  config_dir: $d/
  data_dir: $d/data/
  hub_dir: $d/hub/
  index_path: $d/hub/.index.json
  simulation_path: $d/simulation.yaml
  notification_dir: $d/notifications/
  plugin_dir: /usr/lib/crowdsec/plugins/
cscli:
  output: human
  color: no
db_config:
  type: sqlite
  db_path: $d/data/crowdsec.db
  use_wal: true
  log_level: warning
api:
  client:
    credentials_path: $d/local_api_credentials.yaml
  server:
    log_level: info
    listen_uri: 127.0.0.1:$port
    profiles_path: $d/profiles.yaml
    trusted_ips: [127.0.0.1, "::1"]
prometheus:
  enabled: false
CFG
}

# _lapi_launch DIR PORT KEY: start crowdsec on an existing config and wait until our key
# is accepted. Returns 1 if it died (e.g. port taken) or never answered.
_lapi_launch() {
  local d=$1 port=$2 key=$3 i ok=0
  "$CROWDSEC_BIN_DIR/crowdsec" -c "$d/config.yaml" -no-cs -no-capi </dev/null >>"$d/log/stdout.log" 2>&1 &
  LAPI_PID=$!
  echo "$LAPI_PID" > "$d/crowdsec.pid"
  for i in $(seq 1 200); do   # ~10 s max; usually ready in ~0.1 s
    _lapi_alive "$LAPI_PID" || break
    # our key must work: guards against answering a different LAPI on the same port
    if [ "$(curl -s -o /dev/null -w '%{http_code}' -H "X-Api-Key: $key" \
            "http://127.0.0.1:$port/v1/decisions" 2>/dev/null)" = 200 ]; then ok=1; break; fi
    sleep 0.05
  done
  # a bind failure ("address already in use") kills crowdsec a few ms after start
  if [ $ok = 1 ]; then sleep 0.3; _lapi_alive "$LAPI_PID" && return 0; fi
  kill "$LAPI_PID" 2>/dev/null; wait "$LAPI_PID" 2>/dev/null
  return 1
}

_lapi_write_env() {
  cat > "$LAPI_DIR/env" <<ENV
LAPI_URL=$LAPI_URL
LAPI_KEY=$LAPI_KEY
LAPI_PORT=$LAPI_PORT
LAPI_PID=$LAPI_PID
LAPI_DIR=$LAPI_DIR
CROWDSEC_BIN_DIR=$CROWDSEC_BIN_DIR
CSCLI="$CROWDSEC_BIN_DIR/cscli -c $LAPI_DIR/config.yaml"
ENV
}

lapi_start() {
  lapi_install || return 1
  LAPI_DIR=${LAPI_DIR:-$(mktemp -d /tmp/crowdsec-lapi.XXXXXX)}
  LAPI_BOUNCER=${LAPI_BOUNCER:-test-bouncer}
  LAPI_KEY=${LAPI_KEY:-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')}
  local d=$LAPI_DIR port tries=0 ok=0
  mkdir -p "$d/data" "$d/hub" "$d/log"
  cat > "$d/profiles.yaml" <<'PROF'
name: default_ip_remediation
filters:
 - Alert.Remediation == true && Alert.GetScope() == "Ip"
decisions:
 - type: ban
   duration: 4h
on_success: break
PROF
  echo 'simulation: off' > "$d/simulation.yaml"
  while [ $tries -lt 20 ]; do
    tries=$((tries+1))
    port=${LAPI_PORT:-$((20000 + RANDOM % 20000))}
    if ! _lapi_port_free "$port"; then
      [ -n "${LAPI_PORT:-}" ] && { _lapi_log "port $port already in use"; return 1; }
      continue
    fi
    _lapi_write_config "$d" "$port"
    # machine credentials: `cscli decisions add/delete/import` post through the API as this machine
    lapi_cscli --error machines add lapi-test-machine --auto --force \
      -f "$d/local_api_credentials.yaml" --url "http://127.0.0.1:$port/" >/dev/null \
      || { _lapi_log "cscli machines add failed"; return 1; }
    lapi_cscli --error bouncers delete "$LAPI_BOUNCER" >/dev/null 2>&1 || true
    lapi_cscli --error bouncers add "$LAPI_BOUNCER" -k "$LAPI_KEY" >/dev/null \
      || { _lapi_log "cscli bouncers add failed"; return 1; }
    if _lapi_launch "$d" "$port" "$LAPI_KEY"; then ok=1; break; fi
    if [ -n "${LAPI_PORT:-}" ] || [ $tries -ge 5 ]; then
      _lapi_log "LAPI did not come up:"; tail -n 5 "$d/log/stdout.log" "$d"/log/crowdsec*.log >&2
      return 1
    fi
  done
  [ $ok = 1 ] || { _lapi_log "no free port found"; return 1; }
  LAPI_PORT=$port
  LAPI_URL="http://127.0.0.1:$port/"
  _lapi_write_env
  export LAPI_URL LAPI_KEY LAPI_PID LAPI_DIR LAPI_PORT CROWDSEC_BIN_DIR
}

# lapi_load DIR: load the env of a LAPI started earlier (by another process)
lapi_load() {
  local d=${1:-}
  [ -n "$d" ] && [ -f "$d/env" ] || { _lapi_log "no LAPI env in '$d'"; return 1; }
  # shellcheck disable=SC1091
  set -a; . "$d/env"; set +a
}

# lapi_restart DIR: start a halted LAPI again, same port, key and database. No
# re-registration: deleting and re-adding the bouncer would reset its pull state.
lapi_restart() {
  lapi_load "$1" || return 1
  lapi_install || return 1
  if [ -n "${LAPI_PID:-}" ] && _lapi_alive "$LAPI_PID"; then
    _lapi_log "LAPI in $LAPI_DIR already running (pid $LAPI_PID)"; return 1
  fi
  local tries=0
  # the old listener may take a moment to release the port: retry a few times
  until _lapi_launch "$LAPI_DIR" "$LAPI_PORT" "$LAPI_KEY"; do
    tries=$((tries+1))
    if [ $tries -ge 5 ]; then
      _lapi_log "LAPI did not come back:"; tail -n 5 "$LAPI_DIR/log/stdout.log" "$LAPI_DIR"/log/crowdsec*.log >&2
      return 1
    fi
    sleep 0.2
  done
  _lapi_write_env
}

# lapi_add_decision ORIGIN SCOPE VALUE DURATION [TYPE] [SCENARIO]
# Posts an alert as the machine, so any origin can be produced (crowdsec, lists, CAPI, ...),
# which `cscli decisions add` (origin cscli) and `import` (origin cscli-import) cannot.
lapi_add_decision() {
  local origin=$1 scope=$2 value=$3 dur=$4 type=${5:-ban} scen=${6:-test/scenario} now pw tok
  now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  pw=$(awk '/^password:/{print $2}' "$LAPI_DIR/local_api_credentials.yaml")
  tok=$(curl -sf -X POST "${LAPI_URL}v1/watchers/login" \
        -d "{\"machine_id\":\"lapi-test-machine\",\"password\":\"$pw\",\"scenarios\":[]}" \
        | sed -n 's/.*"token":"\([^"]*\)".*/\1/p') || return 1
  [ -n "$tok" ] || { _lapi_log "machine login failed"; return 1; }
  curl -sf -o /dev/null -X POST -H "Authorization: Bearer $tok" "${LAPI_URL}v1/alerts" -d "[{
    \"capacity\":0,\"events\":[],\"events_count\":1,\"leakspeed\":\"0\",\"message\":\"test\",
    \"scenario\":\"$scen\",\"scenario_hash\":\"\",\"scenario_version\":\"\",\"simulated\":false,
    \"source\":{\"scope\":\"$scope\",\"value\":\"$value\"},\"start_at\":\"$now\",\"stop_at\":\"$now\",
    \"decisions\":[{\"duration\":\"$dur\",\"origin\":\"$origin\",\"scenario\":\"$scen\",
                    \"scope\":\"$scope\",\"type\":\"$type\",\"value\":\"$value\"}]}]"
}

# lapi_halt DIR: stop the crowdsec process, keep everything else
lapi_halt() {
  local d=${1:-${LAPI_DIR:-}} pid
  [ -n "$d" ] && [ -d "$d" ] || { _lapi_log "no LAPI dir"; return 1; }
  pid=$(cat "$d/crowdsec.pid" 2>/dev/null)
  if [ -n "$pid" ] && _lapi_alive "$pid"; then
    kill -TERM "$pid"
    for _ in $(seq 1 100); do _lapi_alive "$pid" || break; sleep 0.05; done  # ~5 s graceful
    _lapi_alive "$pid" && kill -KILL "$pid"
    wait "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do _lapi_alive "$pid" || break; sleep 0.05; done
  fi
  return 0
}

lapi_stop() {
  local d=${1:-${LAPI_DIR:-}}
  lapi_halt "$d" || return 1
  if [ "${LAPI_KEEP_DIR:-0}" != 1 ]; then
    case "$d" in /tmp/*) rm -rf "$d" ;; *) _lapi_log "not removing $d (outside /tmp)" ;; esac
  fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  cmd=${1:-}; [ $# -gt 0 ] && shift
  case "$cmd" in
    install) lapi_install && echo "CROWDSEC_BIN_DIR=$CROWDSEC_BIN_DIR" ;;
    start)   lapi_start && cat "$LAPI_DIR/env" ;;
    halt)    lapi_halt "${1:-${LAPI_DIR:-}}" ;;
    restart) lapi_restart "${1:-${LAPI_DIR:-}}" && cat "$LAPI_DIR/env" ;;
    stop)    lapi_stop "${1:-${LAPI_DIR:-}}" ;;
    cscli)   lapi_load "${1:-}" && shift && lapi_cscli "$@" ;;
    add-decision) lapi_load "${1:-}" && shift && lapi_add_decision "$@" ;;
    *) echo "usage: $0 install | start | halt DIR | restart DIR | stop DIR | cscli DIR ARGS... |" \
            "add-decision DIR ORIGIN SCOPE VALUE DURATION [TYPE] [SCENARIO]" >&2; exit 2 ;;
  esac
fi
