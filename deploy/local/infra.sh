#!/usr/bin/env bash
# Starts NATS (JetStream) and InfluxDB on loopback for `make run`, with data under .local/, or
# reuses ones already running when they pass the checks (nats-server >= 2.10 with JetStream;
# InfluxDB answering /ping). Writes the URLs to .local/env for the other scripts.
# Usage: deploy/local/infra.sh up|down
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
local_dir="$root/.local"
mkdir -p "$local_dir/pids" "$local_dir/logs"
say() { printf '\033[1m[infra]\033[0m %s\n' "$*"; }
cli="$root/target/release/modelperf"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # what, command...
  local what=$1; shift
  for _ in $(seq 1 100); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "infra: $what did not come up (logs in .local/logs)" >&2; exit 1
}

# The URL a previous `up` wrote, when the process it started is still alive.
previous() { # pidfile-name env-var
  local pidfile="$local_dir/pids/$1"
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null && [ -f "$local_dir/env" ] || return 1
  sed -n "s/^export $2=//p" "$local_dir/env"
}

up() {
  # NATS: reuse ours from a previous run, or 4222 if it passes the version check, else start one.
  nats_url="nats://127.0.0.1:4222"
  if own=$(previous nats-server MODELPERF_NATS__URL) && [ -n "$own" ] \
    && MODELPERF_NATS__URL=$own "$cli" server-check >/dev/null; then
    nats_url=$own
    say "reusing $nats_url (started by a previous make run)"
  elif port_busy 4222 && MODELPERF_NATS__URL=$nats_url "$cli" server-check; then
    say "reusing $nats_url"
  else
    port=4222
    if port_busy 4222; then
      port=$(free_port)
      say "port 4222 holds a server that fails the check; starting our own on $port"
    fi
    nats_url="nats://127.0.0.1:$port"
    "$root/.tools/bin/nats-server" -js -a 127.0.0.1 -p "$port" -sd "$local_dir/nats" \
      >"$local_dir/logs/nats.log" 2>&1 &
    echo $! >"$local_dir/pids/nats-server"
    wait_for "nats-server" env MODELPERF_NATS__URL="$nats_url" "$cli" server-check
    say "started nats-server on $nats_url (data in .local/nats)"
  fi
  # InfluxDB: reuse 8086 if it answers /ping, else start our own.
  influx_url="http://127.0.0.1:8086"
  if own=$(previous influxd MODELPERF_INFLUX__URL) && [ -n "$own" ] && curl -sf "$own/ping" >/dev/null 2>&1; then
    influx_url=$own
    say "reusing InfluxDB at $influx_url (started by a previous make run)"
  elif curl -sf "$influx_url/ping" >/dev/null 2>&1; then
    say "reusing InfluxDB at $influx_url"
  else
    http_port=8086; port_busy 8086 && http_port=$(free_port)
    rpc_port=$(free_port)
    influx_url="http://127.0.0.1:$http_port"
    mkdir -p "$local_dir/influx"
    cat >"$local_dir/influx/influxdb.conf" <<CONF
reporting-disabled = true
bind-address = "127.0.0.1:$rpc_port"
[meta]
  dir = "$local_dir/influx/meta"
[data]
  dir = "$local_dir/influx/data"
  wal-dir = "$local_dir/influx/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:$http_port"
  log-enabled = false
[monitor]
  store-enabled = false
CONF
    influxd -config "$local_dir/influx/influxdb.conf" >"$local_dir/logs/influxd.log" 2>&1 &
    echo $! >"$local_dir/pids/influxd"
    wait_for "influxd" curl -sf "$influx_url/ping"
    say "started InfluxDB on $influx_url (data in .local/influx)"
  fi
  printf 'export MODELPERF_NATS__URL=%s\nexport MODELPERF_INFLUX__URL=%s\n' "$nats_url" "$influx_url" >"$local_dir/env"
}

down() {
  for pidfile in "$local_dir"/pids/*; do
    [ -e "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" && say "stopped $(basename "$pidfile") ($pid)"
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$pidfile"
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
