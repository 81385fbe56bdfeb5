#!/usr/bin/env bash
# `make soak`: the whole pipeline (nats-server, InfluxDB, Alertmanager, the five services) at
# 5 000 events/s for 30 minutes; exact accounting afterwards, and the growth of every process's
# resident memory after an 11-minute warm-up (the RL join window of 10 minutes, over which the
# pipeline's memory of closed tasks fills, and a minute), fitted over one sample a second. Fails when an event
# is lost or a service grows 5 MB or more per 10 minutes (docs/BENCHMARKS.md).
#   MODELPERF_SOAK_SECS (default 1800), MODELPERF_SOAK_RATE (5000), MODELPERF_SOAK_WARMUP_SECS (660).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
deploy/local/prereqs.sh
echo "== building (release)"
cargo build --release -p modelperf-collector -p modelperf-aggregator -p modelperf-analyzer \
  -p modelperf-monitor -p modelperf-rl-pipeline -p modelperf-cli -p modelperf-e2e --bins
export PATH="$root/.tools/bin:$PATH"
exec "${CARGO_TARGET_DIR:-target}/release/pipeline-bench" --soak-secs "${MODELPERF_SOAK_SECS:-1800}" \
  --steady-rate "${MODELPERF_SOAK_RATE:-5000}" --warmup-secs "${MODELPERF_SOAK_WARMUP_SECS:-660}"
