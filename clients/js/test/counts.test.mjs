// Counts and live frames arrive in either order, and the client's counts still match the server's: every
// count carries the last_seq it was read with (docs/protocol.md amendment 51). The same cases as
// tests/unit/herald_client/test_counts.py; the server is a running tally.
import assert from "node:assert/strict";
import { test } from "node:test";

import { HeraldClient } from "../herald.js";
import { ADDED_KEPT, CountAnchor } from "../lib/counts.js";

/** The user's counts as the worker keeps them: one per stored, unread, unseen notification. */
function server(unread) {
  const tally = { lastSeq: unread, unread };
  tally.store = () => {
    tally.lastSeq += 1;
    tally.unread += 1;
    return { id: `n${tally.lastSeq}`, seq: tally.lastSeq, read_at: null, seen_at: null };
  };
  tally.markRead = () => {
    tally.unread -= 1;
    return { updated: 1, unread_count: tally.unread, unseen_count: tally.unread, last_seq: tally.lastSeq };
  };
  return tally;
}

/** A connected client fed frames and results directly; `result` is the answer of its own markRead. */
function inbox(tally) {
  const client = new HeraldClient("ws://unused", { getToken: () => "t" });
  let answer = null;
  client.request = async (method) => {
    assert.equal(method, "notifications.mark_read");
    return answer;
  };
  client._recount = () => assert.fail("no recount expected");
  client._onConnected({ last_seq: tally.lastSeq, unread_count: tally.unread, unseen_count: tally.unread }, "t");
  return {
    client,
    frame: (params) => client._onNotification("notification:new", params),
    event: (method, params) => client._onNotification(method, params),
    result: async (result) => {
      answer = result;
      await client.markRead(["n1"]);
    },
  };
}

test("a reply read before a live frame but received after it keeps the frame", async () => {
  const tally = server(5);
  const view = inbox(tally);
  const reply = tally.markRead(); // 4 unread, read before the next notification was stored
  view.frame(tally.store()); // 5 unread: the frame arrives first
  await view.result(reply);
  assert.deepEqual([view.client.unreadCount, view.client.unseenCount], [5, 5]);
});

test("a frame stored before a reply was read but received after it is not counted twice", async () => {
  const tally = server(5);
  const view = inbox(tally);
  const frame = tally.store();
  await view.result(tally.markRead()); // read after the notification was stored: it holds it
  view.frame(frame);
  assert.equal(view.client.unreadCount, 5);
});

test("an event held back while the session opened does not undo connected", () => {
  const tally = server(2);
  const readEvent = { ids: ["n1"], ...tally.markRead() };
  const frame = tally.store();
  const view = inbox(tally); // connected: 2 unread, last_seq 3
  view.event("notification:read", readEvent);
  view.frame(frame);
  assert.equal(view.client.unreadCount, 2);
});

test("any order of replies and frames ends at the server's counts", async () => {
  let state = 7;
  const random = () => ((state = (state * 1103515245 + 12345) % 2 ** 31) / 2 ** 31); // seeded: repeatable
  for (let trial = 0; trial < 200; trial += 1) {
    const tally = server(20);
    const view = inbox(tally);
    const frames = [];
    const results = [];
    for (let n = 0; n < 30; n += 1) {
      if (random() < 0.5) frames.push(tally.store());
      else results.push(tally.markRead());
    }
    // Frames keep their order on the user's exchange; replies overtake them or fall behind.
    while (frames.length || results.length) {
      if (frames.length && (!results.length || random() < 0.5)) view.frame(frames.shift());
      else await view.result(results.shift());
    }
    assert.deepEqual([view.client.unreadCount, view.client.unseenCount], [tally.unread, tally.unread], `trial ${trial}`);
  }
});

test("counts without last_seq are taken as they are; only the newest added frames are remembered", () => {
  const anchor = new CountAnchor();
  assert.deepEqual(anchor.take(3, 2, undefined), [3, 2]);
  assert.deepEqual(anchor.take(0, 0, 0), [0, 0]);
  for (let seq = 1; seq <= ADDED_KEPT + 10; seq += 1) anchor.added(seq, 1, 1);
  assert.deepEqual(anchor.take(0, 0, 0), [ADDED_KEPT, ADDED_KEPT]);
  assert.ok(anchor.counted(0));
  assert.ok(!anchor.counted(1));
  assert.equal(anchor.take(5, 5, -1), null); // read before the counts shown
});
