// Counts ordered against live frames, without I/O (the same as clients/python/herald_client/counts.py).
//
// Every count the server sends (`connected`, a request's result, a `notification:*` event) carries the
// `last_seq` it was read with (docs/protocol.md amendment 51): it counts exactly the notifications stored
// up to that seq. Counts and live frames travel different ways (a reply, the user's exchange) and arrive
// in either order, so "the last count wins, plus one per live frame" drifts: a reply read before a live
// frame but received after it undoes the frame's +1, and an event held back while a session opened undoes
// `connected`'s count. CountAnchor orders them: a count read before the one shown is dropped as stale, a
// live frame at or below the shown count's last_seq is in it already, and one above it that was added is
// added again to every later count read before it was stored.

/** Live frames remembered as added to the counts, newest kept: more than a count would ever lag behind. */
export const ADDED_KEPT = 1000;

export class CountAnchor {
  constructor() {
    this.countedThrough = null; // last_seq of the counts shown; null when they came without one
    this._added = new Map(); // seq → [unread, unseen] a live frame added, oldest first
  }

  /** A new session: its `connected` counts replace whatever was shown. */
  reset() {
    this.countedThrough = null;
    this._added.clear();
  }

  /** The counts to show for counts read with `lastSeq` ([unread, unseen]), or null when they are older
   * than the ones shown. Without lastSeq (an older server) they are taken as they are. */
  take(unread, unseen, lastSeq) {
    if (typeof lastSeq !== "number") return [unread, unseen];
    if (this.countedThrough !== null && lastSeq < this.countedThrough) return null;
    this.countedThrough = lastSeq;
    let [addedUnread, addedUnseen] = [0, 0];
    for (const [seq, [oneUnread, oneUnseen]] of this._added) {
      if (seq <= lastSeq) {
        this._added.delete(seq);
      } else {
        addedUnread += oneUnread;
        addedUnseen += oneUnseen;
      }
    }
    return [
      typeof unread === "number" ? unread + addedUnread : unread,
      typeof unseen === "number" ? unseen + addedUnseen : unseen,
    ];
  }

  /** Whether a live frame's notification is in the shown counts already (stored at or below their
   * last_seq: amendment 43). */
  counted(seq) {
    return typeof seq === "number" && this.countedThrough !== null && seq <= this.countedThrough;
  }

  /** A live frame at `seq` raised the shown counts by `unread` and `unseen`. */
  added(seq, unread, unseen) {
    this._added.set(seq, [unread, unseen]);
    if (this._added.size > ADDED_KEPT) this._added.delete(this._added.keys().next().value);
  }
}
