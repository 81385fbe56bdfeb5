#!/usr/bin/env python3
"""A modelperf producer in Python, written from the JSON Schema alone (schemas/event.v1.json).

For each of N tasks it emits what an agent platform would: task_started -> routing_decision ->
task_completed -> judgment, all linked by task_id. Every event is validated against the schema
with `jsonschema` before it is published as JSON to JetStream subject `perf.raw.<kind>` with
header `Nats-Msg-Id` = the event id (a UUIDv7), and the publish ack is awaited; a timed-out
publish is retried with the same id, so the stream stores it once.

    python3 examples/python/producer.py --url nats://127.0.0.1:4222 --tasks 3

stdout: the id of each published event, one per line, nothing else. Logs go to stderr.
Exit status: 0 when every event was stored, 1 on any failure, 2 on bad arguments.
Dependencies: examples/python/requirements.txt (examples/setup.sh installs them into .tools/venv;
when they are missing here, the script re-runs itself with that venv's interpreter).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import random
import secrets
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = ROOT / "schemas" / "event.v1.json"
VENV = ROOT / ".tools" / "venv"

try:
    import jsonschema
    import nats
    import nats.errors
    import nats.js.errors
except ImportError:
    # Not installed in this interpreter: use the venv of examples/setup.sh when there is one.
    venv_python = VENV / "bin" / "python"
    if venv_python.exists() and Path(sys.prefix).resolve() != VENV.resolve():
        os.execv(str(venv_python), [str(venv_python), __file__, *sys.argv[1:]])
    sys.stderr.write("producer: nats-py and jsonschema are missing; run examples/setup.sh\n")
    sys.exit(1)

log = logging.getLogger("producer")

# (provider, name, median latency ms, success probability, typical judge score, output tokens)
MODELS = [
    ("anthropic", "claude-sonnet-4-5", 9000.0, 0.96, 0.86, 1800),
    ("openai", "gpt-4.1", 7500.0, 0.95, 0.83, 1500),
    ("openai", "gpt-4.1-mini", 3200.0, 0.91, 0.74, 1200),
]
AGENTS = {"claude-sonnet-4-5": "coder-3", "gpt-4.1": "coder-1", "gpt-4.1-mini": "coder-2"}
JUDGE = {"provider": "anthropic", "name": "claude-opus-4-1"}
TASK_TYPES = ["code_edit", "summarize", "plan"]
TENANTS = ["acme", "globex"]
PUBLISH_ATTEMPTS = 3
ACK_TIMEOUT_S = 5.0


def uuid7() -> str:
    """A UUIDv7: 48 bits of Unix milliseconds, version 7, then random bits (RFC 9562)."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(secrets.token_bytes(10), "big")
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # variant 10
    return str(uuid.UUID(int=value))


def rfc3339(ts: datetime) -> str:
    """RFC 3339 in UTC with milliseconds and a Z."""
    return ts.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def envelope(kind: str, ts: datetime, source: str, task: dict, data: dict, **extra) -> dict:
    """The v1 envelope around kind-specific data."""
    event = {
        "v": 1,
        "id": uuid7(),
        "kind": kind,
        "ts": rfc3339(ts),
        "source": source,
        "task_id": task["task_id"],
        "task_type": task["task_type"],
        "tenant": task["tenant"],
    }
    event.update(extra)
    event["data"] = data
    return event


def task_events(rng: random.Random) -> list[dict]:
    """The four events of one synthetic task, in the order the platform emits them."""
    task = {
        "task_id": f"task-{uuid.uuid4().hex[:16]}",
        "task_type": rng.choice(TASK_TYPES),
        "tenant": rng.choice(TENANTS),
    }
    # The router's bandit: a softmax over expected quality gives each arm its probability.
    weights = [math.exp(6 * m[4]) for m in MODELS]
    probabilities = [w / sum(weights) for w in weights]
    chosen_index = rng.choices(range(len(MODELS)), weights=probabilities)[0]
    provider, name, median_ms, success_p, quality, tokens_out = MODELS[chosen_index]
    agent = AGENTS[name]
    model = {"provider": provider, "name": name}

    latency_ms = round(median_ms * math.exp(rng.gauss(0, 0.35)), 1)
    success = rng.random() < success_p
    queue_ms = round(rng.uniform(5, 80), 1)
    decision_ms = round(rng.uniform(1, 6), 2)
    prompt_tokens = rng.randint(2_000, 16_000)
    cached = rng.randint(0, prompt_tokens // 2)
    output_tokens = max(1, int(tokens_out * rng.uniform(0.5, 1.4)))
    # Timestamps: the task started `latency` ago and was judged just now.
    judged_at = datetime.now(timezone.utc)
    completed_at = judged_at - timedelta(milliseconds=rng.uniform(800, 2500))
    started_at = completed_at - timedelta(milliseconds=latency_ms)
    routed_at = started_at + timedelta(milliseconds=decision_ms)

    started = envelope(
        "task_started", started_at, "arbiter.orchestrator", task, {"queue_ms": queue_ms}, agent_id=agent
    )
    routing = envelope(
        "routing_decision",
        routed_at,
        "arbiter.router",
        task,
        {
            "strategy": "bandit",
            "chosen": {"agent_id": agent, "model": f"{provider}/{name}"},
            "candidates": [
                {
                    "agent_id": AGENTS[m[1]],
                    "model": f"{m[0]}/{m[1]}",
                    "score": round(m[4] + rng.uniform(-0.05, 0.05), 3),
                    "probability": round(p, 4),
                }
                for m, p in zip(MODELS, probabilities)
            ],
            "probability": round(probabilities[chosen_index], 4),
            "features": {"prompt_tokens_est": prompt_tokens, "repo_language": "python", "files_in_scope": rng.randint(1, 9)},
            "decision_ms": decision_ms,
        },
    )
    completion = {
        "latency_ms": latency_ms,
        "ttft_ms": round(latency_ms * rng.uniform(0.05, 0.15), 1),
        "success": success,
        "tokens": {"input": prompt_tokens, "output": output_tokens, "cached_input": cached},
        "retries": 0 if success else rng.randint(0, 2),
        "tool_calls": rng.randint(0, 8),
    }
    if not success:
        completion["error_kind"] = rng.choice(["timeout", "rate_limited", "tool_error"])
    completed = envelope(
        "task_completed",
        completed_at,
        "arbiter.orchestrator",
        task,
        completion,
        agent_id=agent,
        model=model,
        attrs={"region": "eu-west-1", "streaming": True},
    )
    score = min(1.0, max(0.0, quality + rng.gauss(0, 0.08) - (0 if success else 0.4)))
    judgment = envelope(
        "judgment",
        judged_at,
        "arbiter.judge",
        task,
        {
            "judge_model": JUDGE,
            "score": round(score, 3),
            "criteria": {
                "correctness": round(min(1.0, max(0.0, score + rng.uniform(-0.05, 0.05))), 3),
                "style": round(min(1.0, max(0.0, score + rng.uniform(-0.1, 0.1))), 3),
            },
            "confidence": round(rng.uniform(0.6, 0.95), 2),
            "passed": score >= 0.7,
            "tokens": {"input": prompt_tokens // 4 + output_tokens, "output": rng.randint(80, 300)},
        },
        model=model,  # on a judgment, `model` is the judged model
    )
    return [started, routing, completed, judgment]


def load_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def validate(validator: jsonschema.protocols.Validator, event: dict) -> None:
    """Raises ValueError naming the field when the event does not match the schema."""
    error = jsonschema.exceptions.best_match(validator.iter_errors(event))
    if error is not None:
        path = ".".join(str(p) for p in error.absolute_path) or "(event)"
        raise ValueError(f"event {event.get('id')} ({event.get('kind')}) breaks the schema at {path}: {error.message}")


async def publish(js, event: dict) -> None:
    """Publishes one event and waits for the stream's ack; a timed-out attempt is retried with the
    same Nats-Msg-Id, so the stream stores the event at most once."""
    subject = f"perf.raw.{event['kind']}"
    body = json.dumps(event, separators=(",", ":")).encode()
    headers = {"Nats-Msg-Id": event["id"], "Content-Type": "application/json"}
    for attempt in range(1, PUBLISH_ATTEMPTS + 1):
        try:
            ack = await js.publish(subject, body, timeout=ACK_TIMEOUT_S, headers=headers)
        except nats.errors.TimeoutError:
            if attempt == PUBLISH_ATTEMPTS:
                raise
            log.warning("no ack for %s on %s (attempt %d), retrying with the same id", event["id"], subject, attempt)
            await asyncio.sleep(0.2 * 2**attempt)
            continue
        log.info(
            "stored %s on %s: stream %s seq %d%s",
            event["id"],
            subject,
            ack.stream,
            ack.seq,
            " (duplicate)" if ack.duplicate else "",
        )
        return


async def run(url: str, tasks: int) -> None:
    validator = load_validator()
    rng = random.Random()
    events = [event for _ in range(tasks) for event in task_events(rng)]
    for event in events:  # nothing is sent unless every event is valid
        validate(validator, event)

    async def on_error(err: Exception) -> None:
        log.warning("nats: %s", err)

    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=3, error_cb=on_error)
    try:
        js = nc.jetstream(timeout=ACK_TIMEOUT_S)
        for event in events:
            await publish(js, event)
            print(event["id"], flush=True)
    finally:
        await nc.drain()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="nats://127.0.0.1:4222", help="NATS server URL")
    parser.add_argument("--tasks", type=int, default=3, help="number of tasks (4 events each)")
    args = parser.parse_args()
    if args.tasks < 0:
        parser.error("--tasks must be >= 0")
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        asyncio.run(run(args.url, args.tasks))
    except nats.js.errors.NoStreamResponseError:
        log.error("no stream stores perf.raw.>: create the topology first (modelperf ensure)")
        return 1
    except Exception as err:  # any failure: say what and exit non-zero
        log.error("failed: %s: %s", type(err).__name__, err or "(no detail)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
