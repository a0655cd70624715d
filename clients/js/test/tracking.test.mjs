// The browser client's sans-I/O bookkeeping (lib/tracking.js), no server needed; the same cases as
// tests/unit/herald_client/test_tracking.py, so both clients keep one rule.
import assert from "node:assert/strict";
import { test } from "node:test";

import { SEEN_IDS, advance, anchor, syncedUpTo, takeVersion } from "../lib/tracking.js";

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
