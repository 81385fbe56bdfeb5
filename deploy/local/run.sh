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
# Services start here as they land (the collector, aggregator, analyzer, monitor, rl-pipeline);
# each is started with its port and logs under .local/ and stopped by `make down`.

say "demo workload: ${MODELPERF_DEMO_COUNT:-20000} messages at ${MODELPERF_DEMO_RATE:-2000}/s, 1% invalid"
$cli load --count "${MODELPERF_DEMO_COUNT:-20000}" --rate "${MODELPERF_DEMO_RATE:-2000}" --invalid-share 0.01 --seed 7

say "summary"
$cli streams
say "NATS at $MODELPERF_NATS__URL, InfluxDB at $MODELPERF_INFLUX__URL; stop them with: make down"
