// Sans-I/O bookkeeping behind "nothing missed, nothing twice": the delivered versions and the watermark
// (the same rules as clients/python/herald_client/tracking.py). The watermark is the highest seq below
// which nothing can be missing; `above` holds the seqs that arrived live above it.

/** Ids remembered for de-duplication, and seqs remembered while there is no watermark yet. */
export const SEEN_IDS = 10000;

/** Seqs held above the watermark at which the client catches up, and again at each further multiple (as
 * tracking.py's advance asks): far fewer than SEEN_IDS, so the sync that passes the gap finds every id it
 * returns still remembered. */
export const HELD_SEQS = 1000;

/** Record the delivery of `item` in `seen` (id → highest seq, null for a live broadcast frame): "new" for
 * an id not seen before, "newer" for a higher seq of a known id (a collapsed notification's new version),
 * false for a repeat. A null seq is new only for an unknown id, and a live broadcast frame (no seq, amendment
 * 9) followed by its stored copy (same id, the user's seq) is one version: the copy is a repeat whose seq is
 * kept for later versions (the same rule as clients/python/herald_client/tracking.py). */
export function takeVersion(seen, item) {
  const id = String(item.id);
  const seq = typeof item.seq === "number" ? item.seq : null;
  if (seen.has(id)) {
    const known = seen.get(id);
    if (known === null && seq !== null) {
      seen.set(id, seq);
      return false;
    }
    if (seq === null || (known !== null && seq <= known)) return false;
    seen.delete(id); // re-inserted last, so the oldest id is the one forgotten
    seen.set(id, seq);
    return "newer";
  }
  seen.set(id, seq);
  if (seen.size > SEEN_IDS) seen.delete(seen.keys().next().value);
  return "new";
}

/** The watermark once `seq` arrived live: it moves over a contiguous run, and waits at a gap (a frame of
 * another worker may still be in flight). Without a watermark, the seqs are kept (bounded) for `anchor`. */
export function advance(watermark, above, seq) {
  if (watermark !== null && seq <= watermark) return watermark;
  if (watermark === null && above.size >= SEEN_IDS) return watermark;
  above.add(seq);
  return moveOver(watermark, above);
}

/** Whether `advance` held one more seq (`held` were held before it), bringing them to a multiple of HELD_SEQS:
 * the client catches up then. A gap that never fills live (a broadcast's own seq: its frame has none, amendment
 * 36) is passed by a sync (syncedUpTo), unless every item above it is gone (deleted or expired): asking again
 * only per further HELD_SEQS, not at every frame, keeps such a gap from setting off a sync per frame. Without a
 * watermark the seqs are only remembered for `anchor`; the catch-up that anchors it is under way. */
export function catchUpDue(watermark, above, held) {
  return watermark !== null && above.size > held && above.size % HELD_SEQS === 0;
}

/** Whether a sync item's seq was delivered: at or below the watermark, or held. Ask before `advance`: a
 * broadcast's copy moves the watermark over every seq held above it, and the ids of the items after it may be
 * forgotten by then. Sound for sync items only: a sync returns seqs above `since`, and the watermark passes
 * only seqs delivered live or by a sync page; a live frame the gateway held back during the session lookup
 * may be at or below a first session's watermark (last_seq) and still be new. */
export function deliveredBefore(watermark, above, seq) {
  return typeof seq === "number" && (above.has(seq) || (watermark !== null && seq <= watermark));
}

/** The items of a sync page whose seq was not delivered (deliveredBefore), asked for all before any is: a
 * page's seqs are distinct, so delivering some of them does not change the answer for the others. */
export function undelivered(watermark, above, items) {
  return items.filter((item) => !deliveredBefore(watermark, above, item.seq));
}

function moveOver(watermark, above) {
  if (watermark === null) return null;
  let mark = watermark;
  while (above.has(mark + 1)) {
    mark += 1;
    above.delete(mark);
  }
  return mark;
}

function forgetUpTo(above, mark) {
  for (const seq of above) if (seq <= mark) above.delete(seq);
}

/** A first watermark: the server's last_seq, read after the connection was attached (so everything after
 * it arrives live), or, if live frames came before it, just below the lowest one seen, so the sync that
 * follows recovers any lost between them (amendment 42). */
export function anchor(above, lastSeq) {
  let mark = lastSeq;
  for (const seq of above) mark = Math.min(mark, seq - 1);
  forgetUpTo(above, mark);
  return moveOver(mark, above);
}

/** A sync page ended at `last` (its last item's seq; none for an empty page): sync returns every seq above
 * `since`, so everything up to it is known. */
export function syncedUpTo(watermark, above, last) {
  if (watermark === null || typeof last !== "number" || last <= watermark) return watermark;
  forgetUpTo(above, last);
  return last;
}

/** A function that calls `run()`, or, while that call is in flight, has it called once more after it (the
 * calls meanwhile share that one), as clients/python/herald_client/inbox.py recounts. A failure is dropped:
 * the next count the server sends corrects what the call would have. */
export function coalesced(run) {
  let running = null;
  let again = false;
  return () => {
    if (running) {
      again = true;
      return;
    }
    running = (async () => {
      try {
        do {
          again = false;
          await run();
        } while (again);
      } catch {
        // corrected by the next count the server sends
      } finally {
        running = null;
      }
    })();
  };
}
