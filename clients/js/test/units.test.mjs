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
