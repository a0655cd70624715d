// The browser client (clients/js/herald.js) against a real Herald gateway + worker, under Node's test
// runner: `node --experimental-websocket --test clients/js/test/` (Node ≥ 22 needs no flag).
//
// tests/integration/test_client_js.py starts the stack and runs this file with:
//   HERALD_TEST_WS_URL       ws://127.0.0.1:PORT/notifications of a gateway (dev tokens on)
//   HERALD_TEST_WS_URL_MAX1  a second gateway of the same stack with one connection per user
//   HERALD_TEST_JWT_SECRET   the HS256 secret both gateways verify with
//   HERALD_TEST_AMQP_URL     the stack's vhost, where events are published
//   HERALD_TEST_PYTHON       the venv's python (publishes through deploy/herald_ops/testing/client.py)
//   HERALD_TEST_VHOST        the stack's vhost (its AMQP connections are closed to get sync:required)
// Reconnects are provoked with a TCP proxy in this process that can cut and hold connections.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createHmac, randomUUID } from "node:crypto";
import net from "node:net";
import { dirname, resolve } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import { HeraldClient, HeraldConnectionError, HeraldRequestError, tokenExpiry } from "../herald.js";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run this through tests/integration/test_client_js.py`);
  return value;
};
const WS_URL = env("HERALD_TEST_WS_URL");
const WS_URL_MAX1 = env("HERALD_TEST_WS_URL_MAX1");
const SECRET = env("HERALD_TEST_JWT_SECRET");
const AMQP_URL = env("HERALD_TEST_AMQP_URL");
const PYTHON = env("HERALD_TEST_PYTHON");
const VHOST = env("HERALD_TEST_VHOST");

const clients = [];
after(() => clients.forEach((client) => client.close()));

function b64url(value) {
  return Buffer.from(typeof value === "string" ? value : JSON.stringify(value)).toString("base64url");
}

function mint(user, { ttl = 3600, secret = SECRET } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const head = `${b64url({ alg: "HS256", typ: "JWT" })}.${b64url({ sub: user, iat: now, exp: now + ttl })}`;
  return `${head}.${createHmac("sha256", secret).update(head).digest("base64url")}`;
}

const uniqueUser = () => `js-${randomUUID().slice(0, 10)}`;

function event(user, fields = {}) {
  return {
    event_id: randomUUID(),
    user_id: user,
    type: "COURSE_NEW_CONTENT",
    title: "New lesson available",
    message: "Lesson 7 was added",
    data: { courseId: "42" },
    ...fields,
  };
}

async function publish(...bodies) {
  const script =
    "import asyncio, json, sys\nfrom herald_ops.testing.client import publish\n" +
    "asyncio.run(publish(sys.argv[1], *json.loads(sys.argv[2])))";
  await promisify(execFile)(PYTHON, ["-c", script, AMQP_URL, JSON.stringify(bodies)], { cwd: ROOT });
}

async function waitUntil(predicate, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolveLater) => setTimeout(resolveLater, 25));
  }
}

/** A client plus a record of everything it emitted. */
function open(url, getToken, options = {}) {
  // Node 20's WebSocket never reports a connection dropped during the handshake: the open timeout does.
  const client = new HeraldClient(url, { getToken, backoffBaseMs: 50, backoffMaxMs: 500, openTimeoutMs: 1000, ...options });
  clients.push(client);
  const events = [];
  client.on("*", (params, meta) => events.push({ ...meta, params }));
  const named = (method) => events.filter((e) => e.method === method);
  const newIds = () => named("notification:new").map((e) => e.params.id);
  return { client, events, named, newIds };
}

/** TCP proxy to the gateway: `cut()` drops every connection, `hold()` refuses new ones until `release()`. */
class Proxy {
  constructor(target) {
    const { hostname, port } = new URL(target.replace(/^ws/, "http"));
    this.sockets = new Set();
    this.holding = false;
    this.stalled = false;
    this.server = net.createServer((inbound) => {
      if (this.holding) return inbound.destroy();
      const outbound = net.connect(Number(port), hostname);
      for (const socket of [inbound, outbound]) {
        this.sockets.add(socket);
        socket.on("close", () => this.sockets.delete(socket));
        socket.on("error", () => {});
      }
      inbound.on("data", (chunk) => this.stalled || outbound.write(chunk));
      outbound.pipe(inbound);
      inbound.on("close", () => outbound.destroy());
      outbound.on("close", () => inbound.destroy());
    });
  }
  async start() {
    await new Promise((done) => this.server.listen(0, "127.0.0.1", done));
    this.url = `ws://127.0.0.1:${this.server.address().port}/notifications`;
    return this;
  }
  cut() {
    this.sockets.forEach((socket) => socket.destroy());
  }
  close() {
    this.cut();
    this.server.close();
  }
}

let proxy;
before(async () => {
  proxy = await new Proxy(WS_URL).start();
});
after(() => proxy.close());

test("connects with a first-frame auth and answers requests", async () => {
  const user = uniqueUser();
  const { client, named } = open(WS_URL, () => mint(user));
  await client.connect();
  assert.equal(client.state, "open");
  assert.equal(client.userId, user);
  assert.equal(client.unreadCount, 0);
  assert.equal(await client.ping(), "pong");
  assert.equal(named("connected")[0].params.user_id, user);
  client.close();
  assert.equal(client.state, "closed");
});

test("a live notification arrives and the unread count follows", async () => {
  const user = uniqueUser();
  const { client, named, newIds } = open(WS_URL, () => mint(user));
  await client.connect();
  const body = event(user, { title: "Hello from JS" });
  await publish(body);
  await waitUntil(() => newIds().length === 1, 10000, "the live notification");
  const item = named("notification:new")[0].params;
  assert.equal(item.title, "Hello from JS");
  assert.equal(item.read_at, null);
  assert.equal(client.unreadCount, 1);
  assert.deepEqual(named("unread").at(-1).params, { count: 1 });

  const page = await client.list({ limit: 5 });
  assert.deepEqual(page.items.map((n) => n.id), [item.id]);
  assert.deepEqual(await client.markRead([item.id]), { updated: 1, unread_count: 0, unseen_count: 0, last_seq: 1 });
  assert.equal(client.unreadCount, 0);
  await waitUntil(() => named("notification:read").length === 1, 10000, "notification:read");

  // A redelivered event id is stored once; anything pushed again is dropped by id.
  await publish(body, event(user, { title: "second" }));
  await waitUntil(() => newIds().length === 2, 10000, "the second notification");
  assert.equal(new Set(newIds()).size, 2);
  assert.equal(client.unreadCount, 1);
});

test("typed helpers and request errors", async () => {
  const user = uniqueUser();
  const { client, newIds } = open(WS_URL, () => mint(user));
  await client.connect();
  await publish(event(user, { title: "a" }), event(user, { title: "b" }), event(user, { title: "c" }));
  await waitUntil(() => newIds().length === 3, 10000, "three notifications");
  const ids = newIds();
  assert.equal((await client.delete([ids[0]])).unread_count, 2);
  assert.equal(client.unreadCount, 2);
  assert.equal((await client.markAllRead()).unread_count, 0);
  assert.equal((await client.markUnread([ids[1]])).unread_count, 1);
  assert.equal(await client.fetchUnreadCount(), 1);
  assert.equal((await client.sync(0)).items.at(-1).id, ids[2]);

  const updated = await client.preferences.update({ types: { NEW_COMMENT: { email: true } } });
  assert.equal(updated.types.NEW_COMMENT.email, true);
  assert.equal((await client.preferences.get()).types.NEW_COMMENT.email, true);
  assert.equal((await client.preferences.reset()).types.NEW_COMMENT.email, false);

  await assert.rejects(client.markRead("nope"), (err) => err instanceof HeraldRequestError && err.code === -32602);
  await assert.rejects(client.request("session.open"), (err) => err.code === -32601);
  await assert.rejects(client.broadcast({ title: "t", message: "m" }), (err) => err.code === 4003);
  assert.equal(client.state, "open");
});

test("two tabs of one user stay in step", async () => {
  const user = uniqueUser();
  const first = open(WS_URL, () => mint(user));
  const second = open(WS_URL, () => mint(user));
  await Promise.all([first.client.connect(), second.client.connect()]);
  await publish(event(user));
  await waitUntil(() => first.client.unreadCount === 1 && second.client.unreadCount === 1, 10000, "both at 1");
  await first.client.markRead(first.newIds());
  await waitUntil(() => second.client.unreadCount === 0, 10000, "the second tab back to 0");
  assert.deepEqual(second.named("notification:read").at(-1).params.ids, second.newIds());
});

test("after a dropped connection it reconnects, syncs what it missed, and shows nothing twice", async () => {
  const user = uniqueUser();
  let tokens = 0;
  const { client, named, newIds } = open(proxy.url, () => {
    tokens += 1;
    return mint(user);
  });
  await client.connect();
  await publish(event(user, { title: "before" }));
  await waitUntil(() => newIds().length === 1, 10000, "the first notification");

  proxy.holding = true;
  proxy.cut();
  await waitUntil(() => client.state === "reconnecting", 10000, "the client to notice");
  await publish(event(user, { title: "missed 0" }), event(user, { title: "missed 1" }), event(user, { title: "missed 2" }));
  // Give the worker time to store them while the client cannot connect.
  await waitUntil(async () => {
    const probe = open(WS_URL, () => mint(user));
    await probe.client.connect();
    const count = await probe.client.fetchUnreadCount();
    probe.client.close();
    return count === 4;
  }, 10000, "the missed notifications to be stored");
  proxy.holding = false;

  await waitUntil(() => newIds().length === 4, 15000, "the missed notifications");
  assert.equal(new Set(newIds()).size, 4);
  const replayed = named("notification:new").filter((e) => e.replayed).map((e) => e.params.title);
  assert.deepEqual(replayed.sort(), ["missed 0", "missed 1", "missed 2"]);
  assert.equal(client.unreadCount, 4);
  assert.ok(tokens >= 2, "getToken is asked again for the reconnect");
  assert.ok(named("disconnected").length >= 1);

  await publish(event(user, { title: "after" }));
  await waitUntil(() => newIds().length === 5, 10000, "a live notification after the reconnect");
  assert.equal(new Set(newIds()).size, 5);
});

test("the gateway's sync:required after it lost RabbitMQ keeps the client going", async () => {
  const user = uniqueUser();
  const { client, named, newIds } = open(WS_URL, () => mint(user));
  await client.connect();
  const connectionId = client.connectionId;
  await promisify(execFile)("rabbitmqctl", ["-q", "close_all_connections", "--vhost", VHOST, "js client test"]);
  await waitUntil(() => named("sync:required").length > 0, 30000, "sync:required from the gateway");
  assert.equal(client.connectionId, connectionId, "the WebSocket itself survived");
  await publish(event(user, { title: "after the broker came back" }));
  await waitUntil(() => newIds().length === 1, 20000, "live delivery after the rebuild");
  assert.equal(client.unreadCount, 1);
});

test("a request without a reply times out", async () => {
  const user = uniqueUser();
  const { client } = open(proxy.url, () => mint(user));
  await client.connect();
  proxy.stalled = true;
  try {
    await assert.rejects(
      client.request("ping", {}, { timeoutMs: 200 }),
      (err) => err instanceof HeraldConnectionError && err.kind === "timeout",
    );
  } finally {
    proxy.stalled = false;
    proxy.cut();
  }
});

test("the token is refreshed before it expires", async () => {
  const user = uniqueUser();
  const issued = [];
  const { client, named } = open(
    WS_URL,
    () => {
      issued.push(mint(user, { ttl: 6 }));
      return issued.at(-1);
    },
    // The margin is capped at half a token's life: each refresh has about 3 s before its token expires.
    { refreshMarginMs: 5000 },
  );
  await client.connect();
  const connectionId = client.connectionId;
  const firstExpiry = tokenExpiry(issued[0]) * 1000;
  await waitUntil(() => issued.length >= 3 && Date.now() > firstExpiry + 500, 30000, "two refreshes");
  assert.equal(await client.ping(), "pong");
  assert.equal(client.connectionId, connectionId);
  assert.equal(named("disconnected").length, 0);
});

test("refused tokens stop the client after one fresh attempt", async () => {
  let calls = 0;
  const { client } = open(WS_URL, () => {
    calls += 1;
    return mint("mallory", { secret: "not-the-gateway-secret-but-long-enough!!" });
  });
  await assert.rejects(client.connect(), (err) => err.kind === "closed");
  assert.equal(client.state, "closed");
  assert.equal(client.closeCode, 4401);
  assert.equal(calls, 2);
});

test("a failing getToken stops the client", async () => {
  const { client, named } = open(WS_URL, async () => {
    throw new Error("auth service down");
  });
  await assert.rejects(client.connect());
  assert.equal(client.state, "closed");
  assert.match(named("closed")[0].params.reason, /auth service down/);
});

test("4008 (too many connections) stops the client and keeps the others", async () => {
  const user = uniqueUser();
  const first = open(WS_URL_MAX1, () => mint(user));
  await first.client.connect();
  const extra = open(WS_URL_MAX1, () => mint(user));
  await assert.rejects(extra.client.connect());
  assert.equal(extra.client.state, "closed");
  assert.equal(extra.client.closeCode, 4008);
  assert.equal(first.client.state, "open");
});
