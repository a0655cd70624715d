// The browser client against a scripted gateway (deploy/herald_ops/testing/client.py ScriptedGateway, driven over stdin)
// for what a real gateway sends only under failure: sync:required, 1013, 4401 at expiry, 1001.
// Needs the project's Python: HERALD_TEST_PYTHON, else .venv/bin/python.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { dirname, resolve } from "node:path";
import { createInterface } from "node:readline";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { HeraldClient } from "../herald.js";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const PYTHON = process.env.HERALD_TEST_PYTHON || resolve(ROOT, ".venv/bin/python");

/** Start a scripted gateway; `command(op, args)` resolves with its answer. */
async function scripted(pageSize = 2) {
  const child = spawn(PYTHON, ["-c", `from herald_ops.testing.client import serve_scripted; serve_scripted(${pageSize})`], {
    cwd: ROOT,
    stdio: ["pipe", "pipe", "inherit"],
  });
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const next = async () => JSON.parse((await lines.next()).value);
  const { url } = await next();
  let queue = Promise.resolve();
  const command = (op, args = {}) => {
    const answer = queue.then(async () => {
      child.stdin.write(`${JSON.stringify({ op, ...args })}\n`);
      return (await next()).result;
    });
    queue = answer.catch(() => {});
    return answer;
  };
  return { url, command, stop: () => child.stdin.end() };
}

const token = (sub) => `x.${Buffer.from(JSON.stringify({ sub, exp: Date.now() / 1000 + 3600 })).toString("base64url")}.y`;

function open(url, options = {}) {
  const client = new HeraldClient(url, { getToken: () => token("u1"), backoffBaseMs: 10, ...options });
  const events = [];
  client.on("*", (params, meta) => events.push({ ...meta, params }));
  const named = (method) => events.filter((e) => e.method === method);
  const newIds = () => named("notification:new").map((e) => e.params.id);
  return { client, named, newIds };
}

async function waitUntil(predicate, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((later) => setTimeout(later, 20));
  }
}

test("sync:required pages from the watermark and shows nothing twice", async () => {
  const fake = await scripted(2);
  const { client, named, newIds } = open(fake.url);
  try {
    await client.connect();
    for (const title of ["lost 1", "lost 2", "lost 3"]) await fake.command("store", { title });
    const live = await fake.command("store", { title: "live 4" });
    await fake.command("send_all", { method: "notification:new", params: live });
    await waitUntil(() => newIds().length === 1, 5000, "the live frame");
    assert.equal(client.watermark, 0, "seq 1–3 are missing: the sync point must not move past them");

    await fake.command("send_all", { method: "sync:required", params: {} });
    await waitUntil(() => newIds().length === 4 && client.unreadCount === 4, 5000, "the sync");
    assert.deepEqual((await fake.command("state")).sync_calls, [0, 2]);
    assert.deepEqual(newIds(), ["n4", "n1", "n2", "n3"]);
    assert.deepEqual(named("notification:new").filter((e) => e.replayed).map((e) => e.params.id), ["n1", "n2", "n3"]);
    assert.equal(client.watermark, 4);
  } finally {
    client.close();
    fake.stop();
  }
});

test("close 1013 (slow reader) reconnects with a fresh token and syncs", async () => {
  const fake = await scripted();
  const { client, named, newIds } = open(fake.url);
  try {
    await client.connect();
    await fake.command("store", { title: "missed 1" });
    await fake.command("store", { title: "missed 2" });
    await fake.command("close_all", { code: 1013, reason: "reader too slow" });
    await waitUntil(() => newIds().length === 2, 5000, "the sync after reconnecting");
    assert.equal(named("disconnected")[0].params.code, 1013);
    const state = await fake.command("state");
    assert.deepEqual(state.sync_calls, [0]);
    assert.equal(state.tokens, 2);
    assert.equal(client.unreadCount, 2);
  } finally {
    client.close();
    fake.stop();
  }
});

test("a first session whose connected had no last_seq anchors its watermark once the worker answers", async () => {
  const fake = await scripted(2);
  const { client, named, newIds } = open(fake.url, { backoffMaxMs: 100 });
  try {
    await fake.command("worker", { up: false });
    await client.connect();
    assert.equal(client.watermark, null, "connected carried no last_seq");
    // History (seq 1, 2) is what list() is for; seq 3 and 5 arrive live, seq 4's live frame is lost.
    for (const title of ["history 1", "history 2"]) await fake.command("store", { title });
    for (const title of ["live 3", "lost 4", "live 5"]) {
      const item = await fake.command("store", { title });
      if (title !== "lost 4") await fake.command("send_all", { method: "notification:new", params: item });
    }
    await waitUntil(() => newIds().length === 2, 5000, "the live frames");
    assert.equal(client.watermark, null, "no anchor while the worker does not answer");

    await fake.command("worker", { up: true });
    await waitUntil(() => client.watermark === 5, 5000, "the anchor and the sync from below the first live frame");
    assert.deepEqual(newIds(), ["n3", "n5", "n4"]);
    assert.deepEqual(named("notification:new").filter((e) => e.replayed).map((e) => e.params.id), ["n4"]);
    assert.deepEqual((await fake.command("state")).sync_calls.slice(-1), [3]);

    // The gap this closes: a reconnect now catches up from the anchored watermark.
    await fake.command("store", { title: "while away 6" });
    await fake.command("close_all", { code: 1013, reason: "reader too slow" });
    await waitUntil(() => newIds().length === 4, 5000, "the catch-up after reconnecting");
    assert.equal(newIds()[3], "n6");
    assert.equal(client.watermark, 6);
  } finally {
    client.close();
    fake.stop();
  }
});

for (const [code, why] of [
  [4401, "token expired"],
  [1001, "server shutting down"],
]) {
  test(`close ${code} after a working session reconnects at once`, async () => {
    const fake = await scripted();
    const { client, named } = open(fake.url, { backoffBaseMs: 60000 });
    try {
      await client.connect();
      const first = client.connectionId;
      await fake.command("close_all", { code, reason: why });
      await waitUntil(() => client.state === "open" && client.connectionId !== first, 5000, "the reconnect");
      assert.deepEqual(named("disconnected")[0].params, { code, reason: why, retryIn: 0 });
      assert.equal((await fake.command("state")).tokens, 2);
    } finally {
      client.close();
      fake.stop();
    }
  });
}

test("frames held back during the session's lookup follow connected and are counted once", async () => {
  const fake = await scripted();
  const { client, named, newIds } = open(fake.url);
  try {
    await fake.command("store", { title: "stored before the lookup, published after it" });
    await fake.command("hold_back", { seq: 1 });
    await fake.command("hold_back", { title: "stored during the lookup" });
    await client.connect();
    await waitUntil(() => newIds().length === 2, 5000, "the held-back frames");
    assert.equal(client.unreadCount, 2, "connected counted n1; n2 came after the lookup");
    assert.equal(named("connected").length, 1);
    assert.equal(client.watermark, 2);
  } finally {
    client.close();
    fake.stop();
  }
});
