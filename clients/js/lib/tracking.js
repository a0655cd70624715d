// Sans-I/O bookkeeping behind "nothing missed, nothing twice": the delivered versions and the watermark
// (the same rules as clients/python/herald_client/tracking.py). The watermark is the highest seq below
// which nothing can be missing; `above` holds the seqs that arrived live above it.

/** Ids remembered for de-duplication, and seqs remembered while there is no watermark yet. */
export const SEEN_IDS = 10000;

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

/** A sync page ended at `last`: sync returns every seq above `since`, so everything up to it is known. */
export function syncedUpTo(watermark, above, last) {
  if (watermark === null || last <= watermark) return watermark;
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
