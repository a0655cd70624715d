// Pure parts of the browser client, no server needed: `node --test clients/js/test/units.test.mjs`.
import assert from "node:assert/strict";
import { test } from "node:test";

import { HeraldClient, backoffDelay, tokenExpiry } from "../herald.js";

const token = (claims) => `x.${Buffer.from(JSON.stringify(claims)).toString("base64url")}.y`;

test("tokenExpiry reads exp from the payload", () => {
  assert.equal(tokenExpiry(token({ sub: "u", exp: 1700000000 })), 1700000000);
  assert.equal(tokenExpiry(token({ sub: "u" })), null);
  assert.equal(tokenExpiry("garbage"), null);
});

test("backoff is full jitter under an exponential cap", () => {
  const delays = Array.from({ length: 400 }, (_, i) => backoffDelay(i % 20, 500, 4000));
  assert.ok(delays.every((d) => d >= 0 && d <= 4000));
  assert.ok(Math.max(...delays) > 2000);
  assert.ok(Array.from({ length: 50 }, () => backoffDelay(0, 500, 4000)).every((d) => d <= 500));
});

test("the watermark does not skip a seq that arrives out of order, and ids are delivered once", () => {
  const client = new HeraldClient("ws://unused", { getToken: () => "t" });
  const delivered = [];
  client.fetchUnreadCount = async () => {};
  client.on("notification:new", (n, meta) => delivered.push([n.id, meta.replayed]));
  client.watermark = 10;
  client.unreadCount = 0;
  for (const seq of [12, 13]) client._deliver({ id: `n${seq}`, seq, read_at: null }, false);
  assert.equal(client.watermark, 10);
  client._deliver({ id: "n11", seq: 11, read_at: null }, false);
  assert.equal(client.watermark, 13);
  client._deliver({ id: "n11", seq: 11, read_at: null }, true);
  client._deliver({ id: "b1", seq: null, read_at: null }, false);
  assert.deepEqual(delivered.map(([id]) => id), ["n12", "n13", "n11", "b1"]);
  assert.equal(client.unreadCount, 3, "the broadcast frame fetches the counts rather than adding one");
});

test("a collapsed notification's new version (same id, higher seq) is delivered again; a repeat is not", () => {
  const client = new HeraldClient("ws://unused", { getToken: () => "t" });
  const delivered = [];
  const refetched = [];
  client.fetchUnreadCount = async () => refetched.push("count");
  client.on("notification:new", (n) => delivered.push([n.id, n.seq, n.count]));
  client.watermark = 0;
  client.unreadCount = 0;
  client._deliver({ id: "c1", seq: 1, count: 1, read_at: null }, false);
  client._deliver({ id: "c1", seq: 2, count: 2, read_at: null }, false);
  client._deliver({ id: "c1", seq: 2, count: 2, read_at: null }, true); // the same version from a sync
  client._deliver({ id: "c1", seq: 1, count: 1, read_at: null }, true); // an older version
  assert.deepEqual(delivered, [["c1", 1, 1], ["c1", 2, 2]]);
  assert.equal(client.unreadCount, 1); // one item, counted once; the new version re-fetches the counts
  assert.deepEqual(refetched, ["count"]);
});

test("a collapse into an item the client never delivered (count > 1) fetches the counts instead of adding one", async () => {
  // Amendment 12: a collapse targets an unread item, so the server's unread count does not move; the item was
  // stored before this client connected (or before this tab took over), so the client has not delivered it.
  const client = new HeraldClient("ws://unused", { getToken: () => "t" });
  const delivered = [];
  const refetched = [];
  client.fetchUnreadCount = async () => refetched.push("count");
  client.on("notification:new", (n) => delivered.push([n.id, n.seq, n.count]));
  client.watermark = 4;
  client.unreadCount = 1;
  client.unseenCount = 1;
  client._deliver({ id: "c1", seq: 5, count: 3, read_at: null, seen_at: null }, false);
  assert.deepEqual(delivered, [["c1", 5, 3]]);
  assert.equal(client.unreadCount, 1);
  assert.equal(client.unseenCount, 1);
  // Two more while that fetch is in flight: one fetch after it covers both.
  client._deliver({ id: "c2", seq: 6, count: 2, read_at: null, seen_at: null }, false);
  client._deliver({ id: "c3", seq: 7, count: 2, read_at: null, seen_at: null }, false);
  await client._recounting;
  assert.deepEqual(refetched, ["count", "count"]);
  assert.equal(client.unreadCount, 1);
  // A first version (count 1) is counted as before.
  client._deliver({ id: "n8", seq: 8, count: 1, read_at: null, seen_at: null }, false);
  assert.equal(client.unreadCount, 2);
  assert.equal(client.unseenCount, 2);
  assert.deepEqual(refetched, ["count", "count"]);
});

test("a client that is closed rejects requests at once", async () => {
  const client = new HeraldClient("ws://unused", { getToken: () => "t" });
  client.close();
  await assert.rejects(client.ping(), (err) => err.kind === "closed");
});

test("a broadcast's live frame (seq null), then its stored copy (same id, a seq), is one delivery", async () => {
  // Amendment 9: the live broadcast frame has `seq: null`; the user's stored copy has a seq.
  const client = new HeraldClient("ws://unused", { getToken: () => "t" });
  const delivered = [];
  const refetched = [];
  client.fetchUnreadCount = async () => {
    refetched.push("count");
    client._setUnread(1); // the server's count
  };
  client.on("notification:new", (n, meta) => delivered.push([n.id, n.seq, meta.replayed]));
  client.watermark = 4;
  client.unreadCount = 1; // `connected` counted the stored copy already (amendment 36)
  client._deliver({ id: "b1", seq: null, read_at: null }, false);
  assert.equal(client.unreadCount, 1, "the frame fetches the counts, it does not add one");
  client._deliver({ id: "b1", seq: 5, read_at: null }, true); // the stored copy, from a sync
  client._deliver({ id: "b1", seq: null, read_at: null }, false); // the frame again
  client._deliver({ id: "b1", seq: 5, read_at: null }, true); // the copy again
  await client._recounting;
  assert.deepEqual(delivered, [["b1", null, false]]);
  assert.deepEqual(refetched, ["count"], "the frame's fetch; a repeat fetches none");
  assert.equal(client.unreadCount, 1);
  // A later version of that id (a higher seq) is still a new version.
  client._deliver({ id: "b1", seq: 7, read_at: null }, false);
  await client._recounting;
  assert.deepEqual(delivered.at(-1), ["b1", 7, false]);
  assert.deepEqual(refetched, ["count", "count"]);
});

test("a token that lives longer than setTimeout's range is not refreshed at once", async () => {
  let asked = 0;
  const client = new HeraldClient("ws://unused", { getToken: () => (asked += 1) });
  try {
    client._scheduleRefresh(token({ sub: "u", exp: Date.now() / 1000 + 40 * 86400 })); // 40 days
    await new Promise((later) => setTimeout(later, 50));
    assert.equal(asked, 0);
    assert.notEqual(client._refreshTimer, null, "a timer waits to look again");
  } finally {
    client.close();
  }
});

/** A WebSocket stand-in whose gateway authenticates and sends `connected`; the test ends each session with
 * `drop(code)`, or every session ends at once with `dropAtOnce`. */
function gatewaySockets({ dropAtOnce = null } = {}) {
  const sockets = [];
  class FakeSocket {
    constructor(url) {
      this.url = url;
      sockets.push(this);
      setTimeout(() => this.onopen?.(), 1);
    }
    send(text) {
      const { id } = JSON.parse(text);
      const connected = { user_id: "u1", connection_id: `c${sockets.length}`, unread_count: 0, unseen_count: 0, last_seq: 0 };
      setTimeout(() => {
        this.onmessage?.({ data: JSON.stringify({ jsonrpc: "2.0", id, result: {} }) });
        this.onmessage?.({ data: JSON.stringify({ jsonrpc: "2.0", method: "connected", params: connected }) });
        if (dropAtOnce !== null) this.drop(dropAtOnce);
      }, 1);
    }
    close() {}
    drop(code) {
      setTimeout(() => this.onclose?.({ code, reason: "gateway failing" }), 1);
    }
  }
  return { sockets, FakeSocket };
}

async function waitUntil(predicate, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((later) => setTimeout(later, 5));
  }
}

/** A client on `FakeSocket` whose every backoff is its cap (Math.random() = 1), and its `retryIn`s. */
function cappedClient(FakeSocket) {
  const client = new HeraldClient("ws://gw/notifications", { getToken: () => "t", WebSocket: FakeSocket, backoffBaseMs: 1, backoffMaxMs: 60000 });
  const delays = [];
  client.on("disconnected", ({ retryIn }) => delays.push(retryIn));
  return { client, delays };
}

test("sessions closed right after connected are backed off; only one that stayed open restarts the backoff", async () => {
  const { sockets, FakeSocket } = gatewaySockets();
  const { client, delays } = cappedClient(FakeSocket);
  const random = Math.random;
  const realNow = Date.now;
  let skipped = 0; // added to Date.now(): a session's length is set by the test, not waited for
  Math.random = () => 1;
  Date.now = () => realNow() + skipped;
  try {
    await client.connect();
    for (const [index, expected] of [1, 2, 4].entries()) {
      sockets.at(-1).drop(1011);
      await waitUntil(() => delays.length === index + 1 && client.state === "open", 5000, `the retry after ${expected} ms`);
    }
    skipped += 10000; // this session stayed open for 10 s
    sockets.at(-1).drop(1011);
    await waitUntil(() => delays.length === 4, 5000, "the retry after a stable session");
    assert.deepEqual(delays, [1, 2, 4, 1]);
  } finally {
    Math.random = random;
    Date.now = realNow;
    client.close();
  }
});

for (const code of [1001, 4401]) {
  test(`a gateway that closes every session with ${code} at once is retried at once only the first time`, async () => {
    const { FakeSocket } = gatewaySockets({ dropAtOnce: code });
    const { client, delays } = cappedClient(FakeSocket);
    const random = Math.random;
    Math.random = () => 1;
    try {
      client.connect().catch(() => {});
      await waitUntil(() => delays.length >= 5, 5000, "five sessions");
      assert.deepEqual(delays.slice(0, 5), [0, 2, 4, 8, 16]);
    } finally {
      Math.random = random;
      client.close();
    }
  });
}
