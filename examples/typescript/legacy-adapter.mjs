#!/usr/bin/env node
// @ts-check
/**
 * The adapter the agent platform installs next to its existing in-memory TypeScript tracker: it
 * forwards the tracker's legacy events, unchanged, to NATS JetStream, where the collector maps
 * them to schema v1 (docs/legacy.md).
 *
 *     import { connect } from "nats";
 *     import { createLegacyForwarder } from "./legacy-adapter.mjs";
 *
 *     const nc = await connect({ servers: "nats://127.0.0.1:4222" });
 *     const forward = createLegacyForwarder(nc);
 *     tracker.on("event", (event) => forward(event).catch(reportError)); // wherever events are kept today
 *
 * Each event is published as its JSON to `perf.raw.legacy.<type>` (the `type` field with every
 * character outside [A-Za-z0-9_-] replaced by `_`, at most 64 characters) with `Nats-Msg-Id` =
 * the event's `id` when it has one, else a new UUID, and `Content-Type: application/json`; the
 * stream's ack is awaited.
 *
 * Run as a script it is a demo that forwards, per task, a tracker `task-started`, a tracker
 * `task-completed` and a DataCollector `performance` event:
 *
 *     node examples/typescript/legacy-adapter.mjs --url nats://127.0.0.1:4222 --tasks 3
 *
 * stdout: the Nats-Msg-Id of each forwarded message, one per line, nothing else. Logs go to
 * stderr. Exit status: 0 when every message was stored, 1 on any failure, 2 on bad arguments.
 */

import { randomUUID } from "node:crypto";
import { realpathSync } from "node:fs";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";

import { connect, headers } from "nats";

/** Longest subject token (the contract's name rule). */
const MAX_TOKEN_CHARS = 64;

/**
 * The subject token of a legacy `type`: every character outside [A-Za-z0-9_-] becomes `_`, at most
 * 64 characters (counted as Unicode code points, like the collector); an empty type becomes `_`.
 * @param {unknown} type
 * @returns {string}
 */
export function legacyTypeToken(type) {
  const chars = Array.from(type == null ? "" : String(type)).slice(0, MAX_TOKEN_CHARS);
  const token = chars.map((c) => (/^[A-Za-z0-9_-]$/.test(c) ? c : "_")).join("");
  return token === "" ? "_" : token;
}

/**
 * @typedef {{subject: string, msgId: string, stream: string, seq: number, duplicate: boolean}} ForwardReceipt
 * @typedef {(event: Record<string, unknown>) => Promise<ForwardReceipt>} Forward
 */

/**
 * A forwarder of legacy events over the connection `nc`.
 *
 * `forward(event)` publishes the event's JSON unchanged and resolves once the stream has stored
 * it (`duplicate` is true when the stream already had a message with this id, e.g. the same
 * DataCollector event forwarded twice). It rejects when no ack arrives: the caller may simply
 * call it again with the same event — an event with an `id` is then stored only once; one
 * without an `id` gets a new UUID per call.
 * @param {import("nats").NatsConnection} nc
 * @param {{timeoutMs?: number}} [options] how long to wait for each ack (default 5000)
 * @returns {Forward}
 */
export function createLegacyForwarder(nc, { timeoutMs = 5000 } = {}) {
  const js = nc.jetstream({ timeout: timeoutMs });
  const encoder = new TextEncoder();
  return async function forward(event) {
    const subject = `perf.raw.legacy.${legacyTypeToken(event.type)}`;
    const msgId = typeof event.id === "string" && event.id !== "" ? event.id : randomUUID();
    const h = headers();
    h.set("Content-Type", "application/json");
    const ack = await js.publish(subject, encoder.encode(JSON.stringify(event)), { msgID: msgId, headers: h, timeout: timeoutMs });
    return { subject, msgId, stream: ack.stream, seq: ack.seq, duplicate: ack.duplicate };
  };
}

/**
 * The legacy events of one task, as the platform's tracker and DataCollector produce them today.
 * @param {string} taskId
 * @returns {Record<string, unknown>[]}
 */
function demoEvents(taskId) {
  const now = () => new Date().toISOString();
  return [
    {
      type: "task-started",
      timestamp: now(),
      data: { taskId, agentId: "agent-7", taskType: "code_edit", queueMs: 35 },
    },
    {
      type: "task-completed",
      timestamp: now(),
      data: {
        taskId,
        agentId: "agent-7",
        model: "anthropic/claude-sonnet-4",
        taskType: "code_edit",
        latencyMs: 2100,
        success: true,
        tokens: { input: 1200, output: 300 },
      },
    },
    {
      id: `dc-${randomUUID()}`,
      type: "performance",
      timestamp: now(),
      agentId: "agent-7",
      taskId,
      metrics: {
        latency: 1234,
        accuracy: 0.92,
        resources: { cpuMs: 120, memoryMb: 256 },
        compliance: 0.98,
        cost: 0.0031,
        reliability: { successRate: 0.75, retries: 1 },
      },
      context: { model: "openai/gpt-4o", taskType: "code_edit" },
    },
  ];
}

/** @param {...unknown} args */
const log = (...args) => console.error(new Date().toISOString(), ...args);

const USAGE = "usage: node legacy-adapter.mjs [--url nats://127.0.0.1:4222] [--tasks N]";

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
  let nc;
  try {
    nc = await connect({ servers: opts.url, timeout: 5000, maxReconnectAttempts: 3 });
    const forward = createLegacyForwarder(nc);
    for (let i = 0; i < opts.tasks; i++) {
      const taskId = `legacy-task-${randomUUID()}`;
      for (const event of demoEvents(taskId)) {
        const r = await forward(event);
        log(`stored ${r.msgId} on ${r.subject}: stream ${r.stream} seq ${r.seq}${r.duplicate ? " (duplicate)" : ""}`);
        process.stdout.write(`${r.msgId}\n`);
      }
    }
  } catch (err) {
    const e = /** @type {{code?: string, message?: string}} */ (err);
    if (e.code === "503") log("failed: no stream stores perf.raw.>: create the topology first (modelperf ensure)");
    else log(`failed: ${e.message ?? err}`);
    process.exitCode = 1;
  } finally {
    await nc?.drain();
  }
}

// Run the demo only as a script: the platform imports createLegacyForwarder.
if (process.argv[1] && import.meta.url === pathToFileURL(realpathSync(process.argv[1])).href) {
  await main();
}
