// The browser client's sans-I/O bookkeeping (lib/tracking.js), no server needed; the same cases as
// tests/unit/herald_client/test_tracking.py, so both clients keep one rule.
import assert from "node:assert/strict";
import { test } from "node:test";

import { HeraldClient, HeraldRequestError } from "../herald.js";
import {
  HELD_SEQS,
  SEEN_IDS,
  advance,
  anchor,
  catchUpDue,
  deliveredBefore,
  syncedUpTo,
  takeVersion,
} from "../lib/tracking.js";

/** Feed `seqs` to advance() from `watermark`; returns the watermark after each. */
function walk(watermark, above, seqs) {
  return seqs.map((seq) => (watermark = advance(watermark, above, seq)));
}

test("the watermark waits at a gap and moves over the run once it fills", () => {
  const above = new Set();
  assert.deepEqual(walk(10, above, [12, 13, 11, 9]), [10, 10, 13, 13]);
  assert.equal(above.size, 0);
});

test("a sync page moves the watermark past what it covered, never back", () => {
  const above = new Set();
  let mark = advance(5, above, 9);
  mark = syncedUpTo(mark, above, 8);
  assert.equal(mark, 8);
  assert.equal(advance(mark, above, 10), 10); // 9 was seen live before the sync: still counted
  assert.equal(syncedUpTo(10, above, 3), 10);
  assert.equal(syncedUpTo(null, above, 7), null); // no watermark: a sync cannot make one
});

test("anchoring without live frames takes last_seq", () => {
  const above = new Set();
  assert.equal(advance(null, above, 3), null);
  assert.deepEqual([...above], [3]);
  assert.equal(anchor(new Set(), 7), 7);
});

test("live frames seen while unanchored hold the anchor below them, and a gap among them holds it back", () => {
  const run = new Set();
  walk(null, run, [5, 6]);
  const mark = anchor(run, 7); // a sync then recovers 7 (lost), not the history before 5
  assert.equal(mark, 6);
  assert.deepEqual(walk(mark, run, [8, 7]), [6, 8]);

  const gap = new Set();
  walk(null, gap, [7, 5]);
  assert.equal(anchor(gap, 9), 5); // 6 may be missing
  assert.equal(advance(5, gap, 6), 7); // 7 was remembered
});

test("seqs remembered while unanchored are bounded", () => {
  const above = new Set();
  walk(null, above, Array.from({ length: SEEN_IDS + 5 }, (_, i) => 100 + i));
  assert.equal(above.size, SEEN_IDS);
  assert.equal(anchor(above, 1_000_000), 100 + SEEN_IDS - 1); // up to the last one remembered
});

test("each version of a notification is taken once; a live broadcast and its stored copy are one", () => {
  const seen = new Map();
  const takes = [
    ["n1", 5],
    ["n1", 5],
    ["n1", 9],
    ["n1", 7],
    ["b1", null],
    ["b1", 12],
    ["b1", null],
    ["b1", 13],
  ].map(([id, seq]) => takeVersion(seen, { id, seq }));
  assert.deepEqual(takes, ["new", false, "newer", false, "new", false, false, "newer"]);
});

test("a sync item's seq is told delivered by the watermark or the held seqs", () => {
  const above = new Set();
  advance(null, above, 7); // remembered while unanchored: delivered
  assert.ok(deliveredBefore(null, above, 7));
  assert.ok(!deliveredBefore(null, above, 3));
  const mark = advance(anchor(above, 4), above, 9);
  const told = Array.from({ length: 10 }, (_, i) => i + 1).filter((seq) => deliveredBefore(mark, above, seq));
  assert.deepEqual(told, [1, 2, 3, 4, 7, 9]);
  assert.ok(!deliveredBefore(mark, above, null));
});

test("a catch-up is due at each multiple of the held seqs", () => {
  const above = new Set();
  let mark = 0;
  const asked = [];
  const hold = (seq) => {
    const held = above.size;
    mark = advance(mark, above, seq);
    if (catchUpDue(mark, above, held)) asked.push(seq);
  };
  for (let seq = 2; seq < 2 + 2 * HELD_SEQS; seq++) hold(seq);
  assert.deepEqual(asked, [1 + HELD_SEQS, 1 + 2 * HELD_SEQS]);
  hold(1 + HELD_SEQS); // a repeat holds nothing more
  hold(1); // fills the gap: nothing is held
  assert.deepEqual(asked, [1 + HELD_SEQS, 1 + 2 * HELD_SEQS]);
  assert.equal(mark, 1 + 2 * HELD_SEQS);
});

// The client's delivery over a store standing in for the server (the same cases as
// tests/unit/herald_client/test_replay_dedup.py). A broadcast's own seq never arrives live (its frame has
// none: amendment 36), so the watermark waits below it and every later live seq is held.

/** A client whose first session opened at `lastSeq`, over `server.stored` (seq ascending, as sync returns
 * them); `server.answering = false` fails every request with 5003 (the worker does not answer). */
function storedClient(lastSeq) {
  const client = new HeraldClient("ws://unused", { getToken: () => "t", backoffBaseMs: 0, backoffMaxMs: 0 });
  const server = { stored: [], lastSeq, answering: true, syncsFrom: [], delivered: [], mostHeld: 0 };
  client.request = async (method, params) => {
    if (!server.answering) throw new HeraldRequestError(5003, "worker unavailable");
    if (method === "notifications.unread_count") return { count: 0, unseen_count: 0, last_seq: server.lastSeq };
    assert.equal(method, "notifications.sync");
    server.syncsFrom.push(params.since);
    const items = server.stored.filter((item) => item.seq > params.since);
    return { items: items.slice(0, params.limit), has_more: items.length > params.limit };
  };
  client.on("notification:new", (n, meta) => server.delivered.push([n.id, meta.replayed]));
  const connected = () => client._onConnected({ last_seq: server.lastSeq, unread_count: 0, unseen_count: 0 }, "t");
  connected();
  /** Let the catch-ups started so far run to the end. */
  server.settle = async () => {
    for (let chain; chain !== client._syncing; ) await (chain = client._syncing);
  };
  /** A notification stored (unless `stored` is false: deleted at once) and its live frame. */
  server.live = (id, seq, { stored = true } = {}) => {
    if (seq !== null) server.lastSeq = seq;
    if (seq !== null && stored) server.stored.push({ id, seq });
    client._onNotification("notification:new", { id, seq, read_at: null });
    server.mostHeld = Math.max(server.mostHeld, client._aboveWatermark.size);
  };
  server.reconnect = connected;
  return { client, server };
}

const liveSeqs = Array.from({ length: SEEN_IDS }, (_, i) => 102 + i);

test("a long session after a broadcast is not replayed by the next reconnect", async () => {
  const { client, server } = storedClient(100);
  server.stored.push({ id: "broadcast", seq: 101 }); // the user's copy; its live frame has no seq
  server.live("broadcast", null);
  for (const seq of liveSeqs) {
    server.live(`n${seq}`, seq);
    await server.settle();
  }
  server.reconnect();
  await server.settle();
  assert.deepEqual(server.delivered, [["broadcast", false], ...liveSeqs.map((seq) => [`n${seq}`, false])]);
  assert.ok(server.mostHeld <= HELD_SEQS, `${server.mostHeld} seqs held`);
  assert.equal(client.watermark, liveSeqs.at(-1));
});

test("a sync after its catch-ups failed for a long session delivers only what was missed", async (t) => {
  t.mock.method(console, "warn", () => {}); // not a warning per failed retry
  // Disconnected when 101 was stored; the reconnect's catch-up fails (the worker does not answer) while more
  // frames arrive live above it than the client remembers ids of.
  const { client, server } = storedClient(100);
  server.stored.push({ id: "missed", seq: 101 });
  server.lastSeq = 101;
  server.answering = false;
  server.reconnect();
  await new Promise(setImmediate); // the catch-up fails, and waits to retry
  for (const seq of liveSeqs) server.live(`n${seq}`, seq);
  server.answering = true;
  await server.settle();
  assert.deepEqual(server.delivered, [...liveSeqs.map((seq) => [`n${seq}`, false]), ["missed", true]]);
  assert.equal(client.watermark, liveSeqs.at(-1));
});

test("a gap no sync can pass asks for one catch-up per HELD_SEQS held", async () => {
  // A gap at 101 (a broadcast, say), and every item above it deleted before a sync could return it: no sync
  // passes the gap, so the held seqs keep growing; a catch-up per frame would be a sync per frame.
  const { server } = storedClient(100);
  for (let seq = 102; seq < 102 + 5 * HELD_SEQS; seq++) {
    server.live(`n${seq}`, seq, { stored: false });
    await server.settle();
  }
  assert.deepEqual(server.syncsFrom, Array(5).fill(100));
  assert.equal(server.delivered.length, 5 * HELD_SEQS);
});
