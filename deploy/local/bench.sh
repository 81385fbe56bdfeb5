#!/usr/bin/env bash
# `make bench`: the benchmarks of what exists so far, on this machine (results and how to read
# them: docs/BENCHMARKS.md).
#   1. the collector: 500 000 pre-loaded raw events drained by the collector and by an identity
#      stage (same binary, same client settings and batch sizes), 3 runs, medians; the collector
#      process at full speed and at a steady 5 000 events/s (latency p50/p99, resident memory).
#   2. the JetStream publish-with-ack baseline as `modelperf load` drives it.
#   3. the aggregator: 500 000 pre-loaded clean events (more than 10 000 series) drained by the
#      partition owners and by an identity owner that fetches and acks without decoding (same
#      owner loop and client settings), 3 runs, medians; the aggregator process draining a fresh
#      pre-load, with its peak resident memory (needs influxd: prereqs.sh or Debian's influxdb).
#   4. the rl-pipeline: 125 000 pre-loaded tasks (4 events each) joined into batches by the
#      pipeline and drained by an identity owner (same pull, checkpoint and ack loop), 3 runs,
#      medians; the pipeline binary holding 1 000 000 open joins (resident memory), killed with
#      kill -9 and restarted (time to rebuild them from the stream).
# Each benchmark starts its own nats-server on a free port with a temporary store.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
deploy/local/prereqs.sh
echo "== building (release)"
cargo build --release --workspace --bins
export PATH="$root/.tools/bin:$PATH"
echo "== collector: target/release/collector-bench ${MODELPERF_BENCH_ARGS:-}"
# shellcheck disable=SC2086
target/release/collector-bench ${MODELPERF_BENCH_ARGS:-}
echo "== aggregator: target/release/aggregator-bench ${MODELPERF_AGGREGATOR_BENCH_ARGS:-}"
# Its own flags (--events N --runs N), e.g. MODELPERF_AGGREGATOR_BENCH_ARGS="--events 100000 --runs 1".
# shellcheck disable=SC2086
target/release/aggregator-bench ${MODELPERF_AGGREGATOR_BENCH_ARGS:-}
echo "== rl-pipeline: target/release/rl-bench ${MODELPERF_RL_BENCH_ARGS:-}"
# Its own flags (--tasks N --runs N --open-joins N; 0 skips a part).
# shellcheck disable=SC2086
MODELPERF_LOG=warn target/release/rl-bench ${MODELPERF_RL_BENCH_ARGS:-}
