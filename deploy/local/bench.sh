#!/usr/bin/env bash
# `make bench`: the benchmarks, on this machine (results and how to read them:
# docs/BENCHMARKS.md). MODELPERF_BENCH_ONLY="pipeline collector" runs a subset (names below).
#   pipeline: the whole pipeline — nats-server, InfluxDB, Alertmanager and the five services —
#      driven by `modelperf load`: plain JetStream publish/consume-with-ack, the identity
#      pipeline's and the pipeline's rate searches in 60 s steps, three 5-minute runs at the
#      highest rate that held (exact accounting, per-stage throughput, end-to-end latencies,
#      memory and CPU of every process), and a run at 5 000 events/s for the latency target.
#      Flags: MODELPERF_PIPELINE_BENCH_ARGS (target/release/pipeline-bench --help lists them).
#   collector: 500 000 pre-loaded raw events drained by the collector and by an identity
#      stage (same binary, same client settings and batch sizes), 3 runs, medians; the
#      collector process at full speed and at a steady 5 000 events/s.
#   aggregator: 500 000 pre-loaded clean events (more than 10 000 series) drained by the
#      partition owners and by an identity owner (same owner loop and client settings), 3 runs,
#      medians; the aggregator process draining a fresh pre-load, with its peak resident memory.
#   rl: 125 000 pre-loaded tasks joined into batches by the pipeline and drained by an
#      identity owner, 3 runs, medians; 1 000 000 open joins (resident memory), kill -9 and
#      restart (time to rebuild them from the stream).
# Each benchmark starts its own servers on free loopback ports with temporary data.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
deploy/local/prereqs.sh
echo "== building (release)"
cargo build --release --workspace --bins
export PATH="$root/.tools/bin:$PATH"
target="${CARGO_TARGET_DIR:-target}/release"
only=" ${MODELPERF_BENCH_ONLY:-pipeline collector aggregator rl} "
wanted() { [[ "$only" == *" $1 "* ]]; }
if wanted pipeline; then
  echo "== pipeline: $target/pipeline-bench ${MODELPERF_PIPELINE_BENCH_ARGS:-}"
  # shellcheck disable=SC2086
  "$target/pipeline-bench" ${MODELPERF_PIPELINE_BENCH_ARGS:-}
fi
if wanted collector; then
  echo "== collector: $target/collector-bench ${MODELPERF_BENCH_ARGS:-}"
  # shellcheck disable=SC2086
  "$target/collector-bench" ${MODELPERF_BENCH_ARGS:-}
fi
if wanted aggregator; then
  echo "== aggregator: $target/aggregator-bench ${MODELPERF_AGGREGATOR_BENCH_ARGS:-}"
  # Its own flags (--events N --runs N), e.g. MODELPERF_AGGREGATOR_BENCH_ARGS="--events 100000 --runs 1".
  # shellcheck disable=SC2086
  "$target/aggregator-bench" ${MODELPERF_AGGREGATOR_BENCH_ARGS:-}
fi
if wanted rl; then
  echo "== rl-pipeline: $target/rl-bench ${MODELPERF_RL_BENCH_ARGS:-}"
  # Its own flags (--tasks N --runs N --open-joins N; 0 skips a part).
  # shellcheck disable=SC2086
  MODELPERF_LOG=warn "$target/rl-bench" ${MODELPERF_RL_BENCH_ARGS:-}
fi
