#!/usr/bin/env bash
# `make test-faults`: the whole pipeline under load, one fault at a time, with exact accounting
# after each (docs/faults.md). Builds the five services, the CLI and the harness (release), then
# runs the harness, which starts nats-server, InfluxDB, Alertmanager, a webhook receiver and the
# services on free loopback ports with temporary data, and a three-node JetStream cluster for
# the last scenario. The summary goes to stdout and .local/faults/summary.md; service logs to
# .local/faults/logs/. Exits non-zero when any accounting is off.
#   FAULTS_ONLY=<substring of a fault's name> runs a subset, e.g. FAULTS_ONLY="kill -9".
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
deploy/local/prereqs.sh
echo "== building (release)"
cargo build --release -p modelperf-collector -p modelperf-aggregator -p modelperf-analyzer \
  -p modelperf-monitor -p modelperf-rl-pipeline -p modelperf-cli -p modelperf-e2e --bins
export PATH="$root/.tools/bin:$PATH"
echo "== faults: ${CARGO_TARGET_DIR:-target}/release/faults"
"${CARGO_TARGET_DIR:-target}/release/faults"
