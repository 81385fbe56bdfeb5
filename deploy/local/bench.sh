#!/usr/bin/env bash
# `make bench`: what exists so far — the JetStream publish-with-ack baseline of this machine, as
# `modelperf load` drives it (3 runs of 200 000 messages, unthrottled). Service benchmarks join
# this script as the services land; results go to docs/BENCHMARKS.md with the command.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
deploy/local/prereqs.sh
cargo build --release --workspace --bins
deploy/local/infra.sh up
# shellcheck disable=SC1091
. .local/env
for run in 1 2 3; do
  echo "== run $run: modelperf load --rate 0 --count ${MODELPERF_BENCH_COUNT:-200000}"
  target/release/modelperf load --rate 0 --count "${MODELPERF_BENCH_COUNT:-200000}" --seed "$run" 2>/dev/null
done
