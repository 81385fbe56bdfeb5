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
export MODELPERF_CONFIG="$root/deploy/local/demo.toml"
say "demo settings: deploy/local/demo.toml (10s windows besides 1m and 1h, 5 s lateness; RL batches every 5 s)"
start_service collector 9101
start_service aggregator 9102
start_service rl-pipeline 9105
# The analyzer and monitor join here as they land.

# Windows from here on hold this run's events (10 s back: the window the load starts in).
since=$(date -u -d '-10 seconds' +%Y-%m-%dT%H:%M:%SZ)
count=${MODELPERF_DEMO_COUNT:-20000}
say "demo workload: $count messages at ${MODELPERF_DEMO_RATE:-2000}/s, 1% invalid, 5% benchmark cases"
$cli load --count "$count" --rate "${MODELPERF_DEMO_RATE:-2000}" --invalid-share 0.01 --benchmark-share 0.05 --seed 7

say "waiting for the collector to drain PERF_RAW"
for _ in $(seq 1 150); do
  [ "$($cli streams | awk '$1=="PERF_RAW"{print $2}')" = "0" ] && break
  sleep 0.2
done

clean=$(curl -sf "http://127.0.0.1:$collector_port/metrics" | awk 'index($0, "modelperf_collector_events_total{")==1 {s+=$NF} END {printf "%d", s}')
say "waiting for the aggregator to write every clean event's 10s window to InfluxDB ($clean events)"
db=${MODELPERF_INFLUX__DATABASE:-modelperf}
counted=0
for _ in $(seq 1 120); do
  counted=$(curl -sf "$MODELPERF_INFLUX__URL/query" --data-urlencode "db=$db" \
    --data-urlencode "q=SELECT SUM(\"count\") FROM \"10s\".\"model_perf\" WHERE time >= '$since'" |
    python3 -c 'import json,sys; r=json.load(sys.stdin)["results"][0]; print(int(r["series"][0]["values"][0][1]) if "series" in r else 0)' || echo 0)
  [ "$counted" -ge "$clean" ] && break
  sleep 1
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
agg_metrics=$(curl -sf "http://127.0.0.1:$aggregator_port/metrics" || true)
asum() { printf '%s\n' "$agg_metrics" | awk -v pat="$1" 'index($0, pat)==1 {s+=$NF} END {printf "%d", s}'; }
printf '  aggregator: %s events in this run'\''s 10s windows in InfluxDB (of %s clean), %s window series written, %s revisions\n' \
  "$counted" "$clean" "$(asum 'modelperf_aggregator_windows_written_total{')" "$(asum 'modelperf_aggregator_window_revisions_total{')"
# Complete tasks become samples after the join grace, batches close every 5 s (demo settings).
sleep 8
rl_metrics=$(curl -sf "http://127.0.0.1:$rl_pipeline_port/metrics" || true)
rsum() { printf '%s\n' "$rl_metrics" | awk -v pat="$1" 'index($0, pat)==1 {s+=$NF} END {printf "%d", s}'; }
printf '  rl-pipeline: %s samples in %s batches on rl.batches.<task type>, %s joins expired incomplete, %s samples filtered\n' \
  "$(rsum 'modelperf_rl_samples_total{')" "$(rsum 'modelperf_rl_batches_total{')" \
  "$(rsum 'modelperf_rl_joins_expired_total{')" "$(rsum 'modelperf_rl_samples_filtered_total{')"
echo
say "per model, this run's 10s windows (InfluxQL, see docs/queries.md):"
curl -sf "$MODELPERF_INFLUX__URL/query" --data-urlencode "db=$db" \
  --data-urlencode "q=SELECT SUM(\"count\") AS events, SUM(\"failure\") AS failures, MAX(\"latency_p95_ms\") AS max_p95_ms, SUM(\"cost_usd\") AS cost_usd FROM \"10s\".\"model_perf\" WHERE \"kind\" = 'task_completed' AND time >= '$since' GROUP BY \"provider\", \"model\"" |
  python3 -c '
import json, sys
r = json.load(sys.stdin)["results"][0]
print("  %-10s %-42s %8s %9s %11s %10s" % ("provider", "model", "events", "failures", "max p95 ms", "cost USD"))
for s in r.get("series", []):
    t, v = s["tags"], s["values"][0]
    print("  %-10s %-42s %8d %9d %11.1f %10.4f" % (t["provider"], t["model"], v[1] or 0, v[2] or 0, v[3] or 0, v[4] or 0))
' || echo "  (InfluxDB query failed)"
echo
say "dead letters by code (modelperf dlq):"
$cli dlq --reasons 2
echo
say "NATS at $MODELPERF_NATS__URL, InfluxDB at $MODELPERF_INFLUX__URL; services log to .local/logs/"
say "stop everything with: make down"
