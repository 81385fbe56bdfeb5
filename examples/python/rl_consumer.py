#!/usr/bin/env python3
"""An RL training job reading modelperf's training batches, checking every batch it reads.

It reads the stream RL_BATCHES (subjects `rl.batches.<dataset>`) with its own durable pull
consumer, so it resumes where it stopped and never disturbs other readers. `--from-seq N` or
`--since TIME` (re)creates that consumer to replay from a stream sequence or a time. Each batch
(MessagePack, the contract in docs/rl.md) is checked before it would reach a trainer:

  - `schema_v` is 1 and `len(samples) == stats.n`;
  - `content_hash` is the SHA-256 of the MessagePack of `samples`: checked against the bytes of
    `samples` as they arrived, and against `samples` decoded and packed again (which shows that
    the decoded samples are exactly what was hashed);
  - `batch_id` is the first 32 hex digits of SHA-256 over the dataset and every sorted task id,
    each followed by a newline;
  - no task id is seen twice in this run.

Each batch is acknowledged after its checks (a failed one is reported and not trained on). At the
end stdout carries one JSON summary: batches, samples, the digest of the sorted task ids (and
the ids themselves with --task-ids), first and last sequence, and every failure.

    python3 examples/python/rl_consumer.py --url nats://127.0.0.1:4222 --durable trainer-a
    python3 examples/python/rl_consumer.py --durable trainer-b --from-seq 120 --max-batches 10
    python3 examples/python/rl_consumer.py --durable trainer-c --since 2026-11-27T10:00:00Z

It stops after --max-batches batches, or when no batch arrived for --idle-timeout seconds.
Exit status: 0 when every batch checked out, 1 on a failed check or an error, 2 on bad arguments.
Logs go to stderr. Dependencies: examples/python/requirements.txt (examples/setup.sh installs
them into .tools/venv; when they are missing here, the script re-runs itself with that venv).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".tools" / "venv"

try:
    import msgpack
    import nats
    import nats.errors
    import nats.js.api as api
    import nats.js.errors
except ImportError:
    # Not installed in this interpreter: use the venv of examples/setup.sh when there is one.
    venv_python = VENV / "bin" / "python"
    if venv_python.exists() and Path(sys.prefix).resolve() != VENV.resolve():
        os.execv(str(venv_python), [str(venv_python), __file__, *sys.argv[1:]])
    sys.stderr.write("rl_consumer: nats-py and msgpack are missing; run examples/setup.sh\n")
    sys.exit(1)

log = logging.getLogger("rl_consumer")

STREAM = "RL_BATCHES"
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="rl_consumer.py",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--url", default=os.environ.get("MODELPERF_NATS__URL", "nats://127.0.0.1:4222"),
                   help="NATS server (default: $MODELPERF_NATS__URL or nats://127.0.0.1:4222)")
    p.add_argument("--durable", default="rl-training-job",
                   help="name of this job's durable consumer on RL_BATCHES (default: rl-training-job)")
    p.add_argument("--dataset", help="read only rl.batches.<DATASET> (default: every dataset)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--from-seq", type=int, metavar="N",
                       help="(re)create the consumer to start at stream sequence N (deliver policy by_start_sequence)")
    start.add_argument("--since", metavar="RFC3339",
                       help="(re)create the consumer to start at the first batch stored at or after this time "
                            "(deliver policy by_start_time), e.g. 2026-11-27T10:00:00Z")
    p.add_argument("--max-batches", type=int, default=0, metavar="N",
                   help="stop after N batches (default: 0, no limit)")
    p.add_argument("--idle-timeout", type=float, default=5.0, metavar="SECONDS",
                   help="stop when no batch arrived for this long (default: 5)")
    p.add_argument("--fetch", type=int, default=16, metavar="N", help="batches asked for per pull (default: 16)")
    p.add_argument("--task-ids", action="store_true", help="list every task id in the summary (sorted)")
    args = p.parse_args(argv)
    if args.dataset is not None and (not args.dataset or re.search(r"[\s*>]", args.dataset)):
        p.error(f"--dataset {args.dataset!r}: not a dataset name (no wildcards or spaces)")
    if args.from_seq is not None and args.from_seq < 1:
        p.error("--from-seq: stream sequences start at 1")
    if args.since is not None and not RFC3339.match(args.since):
        p.error(f"--since {args.since!r}: not an RFC 3339 time (like 2026-11-27T10:00:00Z)")
    if args.max_batches < 0 or args.idle_timeout <= 0 or args.fetch < 1:
        p.error("--max-batches must be >= 0, --idle-timeout > 0 and --fetch >= 1")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", args.durable):
        p.error(f"--durable {args.durable!r}: letters, digits, '-' and '_' only")
    return args


def batch_id(dataset: str, task_ids: list[str]) -> str:
    """First 32 hex digits of SHA-256 over the dataset and each sorted task id, each newline-terminated."""
    h = hashlib.sha256()
    h.update(dataset.encode() + b"\n")
    for t in sorted(task_ids):
        h.update(t.encode() + b"\n")
    return h.hexdigest()[:32]


def samples_bytes(body: bytes) -> bytes:
    """The bytes of the batch's `samples` value exactly as they arrived."""
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(body), 1024))
    unpacker.feed(body)
    for _ in range(unpacker.read_map_header()):
        key = unpacker.unpack()
        start = unpacker.tell()
        unpacker.skip()
        if key == "samples":
            return body[start:unpacker.tell()]
    raise ValueError("the batch has no samples")


def repack(samples: list) -> bytes:
    """`samples` packed as the Rust side packs them (rmp-serde, structs as maps with field names).

    Byte-identical because msgpack-python and rmp-serde make the same choices: map keys in the
    order they were decoded (the struct's field order; BTreeMaps sorted), integers in their
    smallest form, every float as float64 (msgpack-python's default; never use_single_float),
    strings as str8/16/32 (use_bin_type=True; without it, 32 to 255 bytes become str16), an
    absent optional value as a missing key and a null one as nil, just as they arrived.
    """
    return msgpack.packb(samples, use_bin_type=True)


def check(body: bytes, seq: int, seen: dict[str, int]) -> tuple[dict | None, list[dict]]:
    """The batch and what is wrong with it; adds its task ids to `seen` (id -> sequence)."""
    def failure(check_name: str, detail: str, batch: dict | None = None) -> dict:
        return {"seq": seq, "batch_id": (batch or {}).get("batch_id"), "dataset": (batch or {}).get("dataset"),
                "check": check_name, "detail": detail}

    try:
        batch = msgpack.unpackb(body, raw=False)
        raw_samples = samples_bytes(body)
        samples = batch["samples"]
        stats, dataset, claimed = batch["stats"], batch["dataset"], batch["content_hash"]
        tasks = [s["task_id"] for s in samples]
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as e:
        return None, [failure("decode", f"not a batch: {e!r}")]
    failures = []
    if batch.get("schema_v") != 1:
        failures.append(failure("schema_v", f"schema_v {batch.get('schema_v')!r}, this job reads 1", batch))
    if len(samples) != stats.get("n"):
        failures.append(failure("count", f"{len(samples)} samples but stats.n is {stats.get('n')}", batch))
    received = hashlib.sha256(raw_samples).hexdigest()
    if received != claimed:
        failures.append(failure("content_hash", f"content_hash {claimed} but the samples hash to {received}", batch))
    repacked = hashlib.sha256(repack(samples)).hexdigest()
    if repacked != received:
        failures.append(failure("repack", f"the decoded samples pack to {repacked}, the bytes received to {received}", batch))
    want_id = batch_id(dataset, tasks)
    if want_id != batch["batch_id"]:
        failures.append(failure("batch_id", f"batch_id {batch['batch_id']} but its dataset and tasks give {want_id}", batch))
    for t in tasks:
        if t in seen:
            failures.append(failure("duplicate_task", f"task {t} already read in the batch at seq {seen[t]}", batch))
        else:
            seen[t] = seq
    return batch, failures


def train(batch: dict) -> None:
    """Where a real job hands a checked batch to its trainer: samples are (state, action, reward)
    with `action.probability` the propensity for off-policy correction and `weight` = 1/sample_rate."""


async def consumer(js, args: argparse.Namespace) -> api.ConsumerInfo:
    """This job's durable consumer: created when missing, recreated at --from-seq / --since."""
    subject = f"rl.batches.{args.dataset}" if args.dataset else "rl.batches.>"
    try:
        existing = await js.consumer_info(STREAM, args.durable)
    except nats.js.errors.NotFoundError:
        existing = None
    repositioned = args.from_seq is not None or args.since is not None
    if existing is not None and not repositioned:
        if existing.config.filter_subject != subject:
            raise SystemExit(
                f"rl_consumer: consumer {args.durable} reads {existing.config.filter_subject}, not {subject}: "
                f"use another --durable, or --from-seq/--since to recreate it")
        log.info("resuming consumer %s (%d batches pending)", args.durable, existing.num_pending)
        return existing
    if existing is not None:
        log.info("recreating consumer %s at %s", args.durable,
                 f"seq {args.from_seq}" if args.from_seq is not None else args.since)
        await js.delete_consumer(STREAM, args.durable)
    config = api.ConsumerConfig(
        durable_name=args.durable,
        filter_subject=subject,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=60,
        max_ack_pending=args.fetch,
        deliver_policy=api.DeliverPolicy.ALL,
    )
    if args.from_seq is not None:
        config.deliver_policy, config.opt_start_seq = api.DeliverPolicy.BY_START_SEQUENCE, args.from_seq
    elif args.since is not None:
        # Passed on as written: the server parses RFC 3339 with nanoseconds.
        config.deliver_policy, config.opt_start_time = api.DeliverPolicy.BY_START_TIME, args.since
    info = await js.add_consumer(STREAM, config)
    log.info("created consumer %s on %s (%d batches pending)", args.durable, subject, info.num_pending)
    return info


async def run(args: argparse.Namespace) -> dict:
    nc = await nats.connect(args.url, name="rl-consumer-example", connect_timeout=5, max_reconnect_attempts=3)
    try:
        js = nc.jetstream()
        try:
            await js.stream_info(STREAM)
        except nats.js.errors.NotFoundError:
            raise SystemExit(f"rl_consumer: no stream {STREAM} at {args.url}: start the rl-pipeline "
                             f"(or run `modelperf ensure`)") from None
        await consumer(js, args)
        sub = await js.pull_subscribe_bind(durable=args.durable, stream=STREAM)
        seen: dict[str, int] = {}
        summary = {"consumer": args.durable, "stream": STREAM, "batches": 0, "samples": 0,
                   "first_seq": None, "last_seq": None, "failures": []}
        loop = asyncio.get_running_loop()
        idle_since = loop.time()
        while not args.max_batches or summary["batches"] < args.max_batches:
            left = args.idle_timeout - (loop.time() - idle_since)
            if left <= 0:
                break
            want = args.fetch if not args.max_batches else min(args.fetch, args.max_batches - summary["batches"])
            try:
                msgs = await sub.fetch(want, timeout=max(left, 0.1))
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                # No batch within the wait (nats-py raises either, depending on where the wait
                # ran out): try again until the idle timeout.
                continue
            idle_since = loop.time()
            for msg in msgs:
                seq = msg.metadata.sequence.stream
                batch, failures = check(msg.data, seq, seen)
                summary["batches"] += 1
                summary["first_seq"] = seq if summary["first_seq"] is None else summary["first_seq"]
                summary["last_seq"] = seq
                if batch is not None:
                    summary["samples"] += len(batch["samples"])
                for f in failures:
                    log.error("seq %d: batch %s (dataset %s) failed %s: %s",
                              seq, f["batch_id"], f["dataset"], f["check"], f["detail"])
                summary["failures"].extend(failures)
                if batch is not None and not failures:
                    train(batch)
                # Checked (and trained on, or reported): this job will not be given it again.
                await msg.ack_sync()
        ids = sorted(seen)
        digest = hashlib.sha256("".join(t + "\n" for t in ids).encode()).hexdigest()
        summary.update(tasks=len(ids), task_ids_sha256=digest, ok=not summary["failures"])
        if args.task_ids:
            summary["task_ids"] = ids
        return summary
    finally:
        # Every ack was confirmed (ack_sync): closing loses nothing, while a drain would wait for
        # the last, expired pull to end.
        await nc.close()


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        summary = asyncio.run(run(args))
    except (OSError, nats.errors.Error, asyncio.TimeoutError) as e:
        log.error("%s: %r", args.url, e)
        return 1
    print(json.dumps(summary, sort_keys=True))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
