#!/usr/bin/env bash
# `make run`: installs what is missing, starts NATS and InfluxDB (or reuses checked ones), builds,
# starts every service that exists, drives a demo workload through `modelperf load`, and prints
# a summary. `make down` stops what it started.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
say() { printf '\033[1m[run]\033[0m %s\n' "$*"; }

deploy/local/prereqs.sh
say "building (release)"
cargo build --release --workspace --bins
deploy/local/infra.sh up
# shellcheck disable=SC1091
. .local/env
cli=target/release/modelperf

say "ensuring streams, consumers and buckets"
$cli ensure

# start_service NAME PORT: runs target/release/modelperf-NAME in the background with its health
# and metrics on PORT (or a free port when PORT is taken), logs in .local/logs/NAME.log, and
# waits for /readyz; `make down` stops it.
start_service() {
  local name=$1 port=$2 pidfile=".local/pids/$1"
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    kill "$(cat "$pidfile")" 2>/dev/null || true
    sleep 1
  fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  fi
  MODELPERF_HTTP__LISTEN="127.0.0.1:$port" MODELPERF_LOG_FORMAT=json \
    "target/release/modelperf-$name" >".local/logs/$name.log" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && { say "$name ready: http://127.0.0.1:$port/metrics"; eval "${name//-/_}_port=$port"; return 0; }
    kill -0 "$(cat "$pidfile")" 2>/dev/null || { echo "run: $name exited (see .local/logs/$name.log):" >&2; tail -5 ".local/logs/$name.log" >&2; exit 1; }
    sleep 0.2
  done
  echo "run: $name not ready after 20 s (see .local/logs/$name.log)" >&2
  exit 1
}

say "starting the services"
start_service collector 9101
# The aggregator, analyzer, monitor and rl-pipeline join here as they land.

count=${MODELPERF_DEMO_COUNT:-20000}
say "demo workload: $count messages at ${MODELPERF_DEMO_RATE:-2000}/s, 1% invalid, 5% benchmark cases"
$cli load --count "$count" --rate "${MODELPERF_DEMO_RATE:-2000}" --invalid-share 0.01 --benchmark-share 0.05 --seed 7

say "waiting for the collector to drain PERF_RAW"
for _ in $(seq 1 150); do
  [ "$($cli streams | awk '$1=="PERF_RAW"{print $2}')" = "0" ] && break
  sleep 0.2
done

say "summary"
$cli streams
echo
metrics=$(curl -sf "http://127.0.0.1:$collector_port/metrics" || true)
sum() { printf '%s\n' "$metrics" | awk -v pat="$1" 'index($0, pat)==1 {s+=$NF} END {printf "%d", s}'; }
printf '  collector: %s clean events, %s dead letters, %s priced, %s unpriced, %s without tokens\n' \
  "$(sum 'modelperf_collector_events_total{')" "$(sum 'modelperf_collector_rejected_total{')" \
  "$(sum 'modelperf_collector_cost_total{status="priced"')" "$(sum 'modelperf_collector_cost_total{status="unpriced"')" \
  "$(sum 'modelperf_collector_cost_total{status="unknown_tokens"')"
echo
say "dead letters by code (modelperf dlq):"
$cli dlq --reasons 2
echo
say "NATS at $MODELPERF_NATS__URL, InfluxDB at $MODELPERF_INFLUX__URL; services log to .local/logs/"
say "stop everything with: make down"
