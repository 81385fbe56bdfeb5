#!/usr/bin/env node
// @ts-check
/**
 * A modelperf producer in TypeScript-flavoured JavaScript (ES module + JSDoc types, no build
 * step), written from the JSON Schema alone (schemas/event.v1.json).
 *
 * For each of N tasks it emits what an agent platform would: task_started -> routing_decision ->
 * task_completed -> judgment, all linked by task_id. Every event is validated against the schema
 * with Ajv before it is published as JSON to JetStream subject `perf.raw.<kind>` with header
 * `Nats-Msg-Id` = the event id (a UUIDv7), and the publish ack is awaited; a timed-out publish is
 * retried with the same id, so the stream stores it once.
 *
 *     node examples/typescript/producer.mjs --url nats://127.0.0.1:4222 --tasks 3
 *
 * stdout: the id of each published event, one per line, nothing else. Logs go to stderr.
 * Exit status: 0 when every event was stored, 1 on any failure, 2 on bad arguments.
 */

import { randomBytes, randomUUID } from "node:crypto";
import { readFileSync, realpathSync } from "node:fs";
import { parseArgs } from "node:util";
import { setTimeout as sleep } from "node:timers/promises";
import { pathToFileURL } from "node:url";

import Ajv2020 from "ajv/dist/2020.js";
import { connect, headers } from "nats";

const SCHEMA_URL = new URL("../../schemas/event.v1.json", import.meta.url);
const PUBLISH_ATTEMPTS = 3;
const ACK_TIMEOUT_MS = 5000;

/**
 * @typedef {{provider: string, name: string}} ModelRef
 * @typedef {{v: 1, id: string, kind: string, ts: string, source: string, task_id?: string,
 *   agent_id?: string, model?: ModelRef | string, task_type?: string, tenant?: string,
 *   attrs?: Record<string, string | number | boolean>, data: Record<string, unknown>}} Event
 * @typedef {{provider: string, name: string, agent: string, medianMs: number, successP: number,
 *   quality: number, tokensOut: number}} Profile
 */

/** @type {Profile[]} */
const MODELS = [
  { provider: "anthropic", name: "claude-sonnet-4-5", agent: "coder-3", medianMs: 9000, successP: 0.96, quality: 0.86, tokensOut: 1800 },
  { provider: "openai", name: "gpt-4.1", agent: "coder-1", medianMs: 7500, successP: 0.95, quality: 0.83, tokensOut: 1500 },
  { provider: "openai", name: "gpt-4.1-mini", agent: "coder-2", medianMs: 3200, successP: 0.91, quality: 0.74, tokensOut: 1200 },
];
const JUDGE = { provider: "anthropic", name: "claude-opus-4-1" };
const TASK_TYPES = ["code_edit", "summarize", "plan"];
const TENANTS = ["acme", "globex"];

/** @param {...unknown} args */
const log = (...args) => console.error(new Date().toISOString(), ...args);

/** A UUIDv7: 48 bits of Unix milliseconds, version 7, then random bits (RFC 9562). */
export function uuidv7() {
  const b = randomBytes(16);
  let ms = Date.now();
  for (let i = 5; i >= 0; i--) {
    b[i] = ms % 256;
    ms = Math.floor(ms / 256);
  }
  b[6] = (b[6] & 0x0f) | 0x70; // version 7
  b[8] = (b[8] & 0x3f) | 0x80; // variant 10
  const h = b.toString("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/**
 * A validator of v1 events. The schema annotates numbers with Rust's widths (`double`, `uint64`,
 * ...); they are registered as number formats so Ajv's strict mode accepts and checks them.
 * @returns {(event: Event) => string | null} the first problem, or null when valid
 */
export function eventValidator() {
  const schema = JSON.parse(readFileSync(SCHEMA_URL, "utf8"));
  const ajv = new Ajv2020({ allErrors: false, strict: true, allowUnionTypes: true });
  ajv.addFormat("double", { type: "number", validate: Number.isFinite });
  ajv.addFormat("int64", { type: "number", validate: Number.isSafeInteger });
  ajv.addFormat("uint64", { type: "number", validate: (n) => Number.isSafeInteger(n) && n >= 0 });
  ajv.addFormat("uint32", { type: "number", validate: (n) => Number.isSafeInteger(n) && n >= 0 && n <= 0xffffffff });
  const validate = ajv.compile(schema);
  return (event) => (validate(event) ? null : ajv.errorsText(validate.errors));
}

/** @param {number} lo @param {number} hi */
const uniform = (lo, hi) => lo + Math.random() * (hi - lo);
/** @template T @param {T[]} xs @returns {T} */
const pick = (xs) => xs[Math.floor(Math.random() * xs.length)];
/** @param {number} x @param {number} digits */
const round = (x, digits) => Number(x.toFixed(digits));
/** @param {number} x */
const unit = (x) => Math.min(1, Math.max(0, x));
/** A standard normal sample (Box-Muller). */
const gauss = () => Math.sqrt(-2 * Math.log(1 - Math.random())) * Math.cos(2 * Math.PI * Math.random());

/**
 * The v1 envelope around kind-specific data.
 * @param {string} kind @param {Date} ts @param {string} source
 * @param {{taskId: string, taskType: string, tenant: string}} task
 * @param {Record<string, unknown>} data @param {Partial<Event>} [extra]
 * @returns {Event}
 */
function envelope(kind, ts, source, task, data, extra = {}) {
  return {
    v: 1,
    id: uuidv7(),
    kind,
    ts: ts.toISOString(),
    source,
    task_id: task.taskId,
    task_type: task.taskType,
    tenant: task.tenant,
    ...extra,
    data,
  };
}

/** The four events of one synthetic task, in the order the platform emits them. @returns {Event[]} */
export function taskEvents() {
  const task = { taskId: `task-${randomUUID().replaceAll("-", "").slice(0, 16)}`, taskType: pick(TASK_TYPES), tenant: pick(TENANTS) };
  // The router's bandit: a softmax over expected quality gives each arm its probability.
  const weights = MODELS.map((m) => Math.exp(6 * m.quality));
  const total = weights.reduce((a, b) => a + b, 0);
  const probabilities = weights.map((w) => w / total);
  let r = Math.random();
  let chosen = MODELS.length - 1;
  for (let i = 0; i < MODELS.length; i++) {
    if (r < probabilities[i]) {
      chosen = i;
      break;
    }
    r -= probabilities[i];
  }
  const m = MODELS[chosen];
  const model = { provider: m.provider, name: m.name };

  const latencyMs = round(m.medianMs * Math.exp(0.35 * gauss()), 1);
  const success = Math.random() < m.successP;
  const decisionMs = round(uniform(1, 6), 2);
  const promptTokens = Math.floor(uniform(2000, 16000));
  const outputTokens = Math.max(1, Math.floor(m.tokensOut * uniform(0.5, 1.4)));
  // Timestamps: the task started `latency` ago and was judged just now.
  const judgedAt = Date.now();
  const completedAt = judgedAt - uniform(800, 2500);
  const startedAt = completedAt - latencyMs;

  const started = envelope("task_started", new Date(startedAt), "arbiter.orchestrator", task, { queue_ms: round(uniform(5, 80), 1) }, { agent_id: m.agent });
  const routing = envelope("routing_decision", new Date(startedAt + decisionMs), "arbiter.router", task, {
    strategy: "bandit",
    chosen: { agent_id: m.agent, model: `${m.provider}/${m.name}` },
    candidates: MODELS.map((c, i) => ({
      agent_id: c.agent,
      model: `${c.provider}/${c.name}`,
      score: round(c.quality + uniform(-0.05, 0.05), 3),
      probability: round(probabilities[i], 4),
    })),
    probability: round(probabilities[chosen], 4),
    features: { prompt_tokens_est: promptTokens, repo_language: "typescript", files_in_scope: Math.floor(uniform(1, 10)) },
    decision_ms: decisionMs,
  });
  /** @type {Record<string, unknown>} */
  const completion = {
    latency_ms: latencyMs,
    ttft_ms: round(latencyMs * uniform(0.05, 0.15), 1),
    success,
    tokens: { input: promptTokens, output: outputTokens, cached_input: Math.floor(uniform(0, promptTokens / 2)) },
    retries: success ? 0 : Math.floor(uniform(0, 3)),
    tool_calls: Math.floor(uniform(0, 9)),
  };
  if (!success) completion.error_kind = pick(["timeout", "rate_limited", "tool_error"]);
  const completed = envelope("task_completed", new Date(completedAt), "arbiter.orchestrator", task, completion, {
    agent_id: m.agent,
    model,
    attrs: { region: "eu-west-1", streaming: true },
  });
  const score = unit(m.quality + 0.08 * gauss() - (success ? 0 : 0.4));
  const judgment = envelope(
    "judgment",
    new Date(judgedAt),
    "arbiter.judge",
    task,
    {
      judge_model: JUDGE,
      score: round(score, 3),
      criteria: { correctness: round(unit(score + uniform(-0.05, 0.05)), 3), style: round(unit(score + uniform(-0.1, 0.1)), 3) },
      confidence: round(uniform(0.6, 0.95), 2),
      passed: score >= 0.7,
      tokens: { input: Math.floor(promptTokens / 4) + outputTokens, output: Math.floor(uniform(80, 300)) },
    },
    { model }, // on a judgment, `model` is the judged model
  );
  return [started, routing, completed, judgment];
}

/**
 * Publishes one event and waits for the stream's ack; a timed-out attempt is retried with the same
 * Nats-Msg-Id, so the stream stores the event at most once.
 * @param {import("nats").JetStreamClient} js @param {Event} event
 */
async function publish(js, event) {
  const subject = `perf.raw.${event.kind}`;
  const body = new TextEncoder().encode(JSON.stringify(event));
  const h = headers();
  h.set("Content-Type", "application/json");
  for (let attempt = 1; ; attempt++) {
    try {
      const ack = await js.publish(subject, body, { msgID: event.id, headers: h, timeout: ACK_TIMEOUT_MS });
      log(`stored ${event.id} on ${subject}: stream ${ack.stream} seq ${ack.seq}${ack.duplicate ? " (duplicate)" : ""}`);
      return;
    } catch (err) {
      const timedOut = /** @type {{code?: string}} */ (err).code === "TIMEOUT";
      if (!timedOut || attempt >= PUBLISH_ATTEMPTS) throw err;
      log(`no ack for ${event.id} on ${subject} (attempt ${attempt}), retrying with the same id`);
      await sleep(200 * 2 ** attempt);
    }
  }
}

/** @param {string} url @param {number} tasks */
async function run(url, tasks) {
  const check = eventValidator();
  const events = Array.from({ length: tasks }, taskEvents).flat();
  for (const event of events) {
    // Nothing is sent unless every event is valid.
    const problem = check(event);
    if (problem) throw new Error(`event ${event.id} (${event.kind}) breaks the schema: ${problem}`);
  }
  const nc = await connect({ servers: url, timeout: 5000, maxReconnectAttempts: 3 });
  try {
    const js = nc.jetstream({ timeout: ACK_TIMEOUT_MS });
    for (const event of events) {
      await publish(js, event);
      process.stdout.write(`${event.id}\n`);
    }
  } finally {
    await nc.drain();
  }
}

const USAGE = "usage: node producer.mjs [--url nats://127.0.0.1:4222] [--tasks N]";

async function main() {
  /** @type {{url: string, tasks: number}} */
  let opts;
  try {
    const { values } = parseArgs({
      options: {
        url: { type: "string", default: "nats://127.0.0.1:4222" },
        tasks: { type: "string", default: "3" },
        help: { type: "boolean", short: "h", default: false },
      },
    });
    if (values.help) {
      console.error(USAGE);
      process.exit(0);
    }
    const tasks = Number(values.tasks);
    if (!Number.isInteger(tasks) || tasks < 0) throw new Error(`--tasks must be a non-negative integer, got ${values.tasks}`);
    opts = { url: String(values.url), tasks };
  } catch (err) {
    console.error(`${USAGE}\n${/** @type {Error} */ (err).message}`);
    process.exit(2);
  }
  try {
    await run(opts.url, opts.tasks);
  } catch (err) {
    const e = /** @type {{code?: string, message?: string}} */ (err);
    if (e.code === "503") log("failed: no stream stores perf.raw.>: create the topology first (modelperf ensure)");
    else log(`failed: ${e.message ?? err}`);
    process.exitCode = 1;
  }
}

// Run only as a script, so that other modules can import the helpers above.
if (process.argv[1] && import.meta.url === pathToFileURL(realpathSync(process.argv[1])).href) {
  await main();
}
