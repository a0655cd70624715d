// HeraldClient: one WebSocket to a gateway (authentication, reconnects and fail-over, catch-up from the
// watermark, token refresh). See herald.js for the semantics.

import { DEFAULTS, HeraldApi, HeraldConnectionError, HeraldRequestError, backoffDelay, tokenExpiry, urlList } from "./api.js";
import { advance, anchor, catchUpDue, coalesced, syncedUpTo, takeVersion, undelivered } from "./tracking.js";

const CLOSE_UNAUTHORIZED = 4401;
const CLOSE_TOO_MANY_CONNECTIONS = 4008;
const CLOSE_GOING_AWAY = 1001;
const MAX_AUTH_FAILURES = 2;
const SYNC_PAGE = 500;
const MAX_TIMER_MS = 2 ** 31 - 1; // the longest delay setTimeout keeps
const STABLE_SESSION_MS = 10000; // a shorter session is a failure: it does not restart the backoff

export class HeraldClient extends HeraldApi {
  /**
   * @param {string | string[]} urls ws(s)://host:port/notifications, or several gateways to fail over between
   * @param {object} options getToken (required, may be async), requestTimeoutMs (10000),
   *   backoffBaseMs (500), backoffMaxMs (30000), refreshMarginMs (60000), openTimeoutMs (15000),
   *   WebSocket (constructor; defaults to the global one), watermark (resume from this seq: the first
   *   connection syncs what came after it, as a reconnect does).
   */
  constructor(urls, options) {
    super();
    if (!options || typeof options.getToken !== "function") throw new TypeError("options.getToken is required");
    this.urls = urlList(urls);
    this._urlIndex = 0;
    this.options = { ...DEFAULTS, WebSocket: globalThis.WebSocket, ...options };
    this.watermark = typeof options.watermark === "number" ? options.watermark : null;
    this._resume = this.watermark !== null;

    this._ws = null;
    this._nextId = 1;
    this._pending = new Map();
    this._seen = new Map();
    this._aboveWatermark = new Set();
    this._waiters = new Set();
    this._attempt = 0;
    this._authFailures = 0;
    this._refreshTimer = null;
    this._everOpened = false;
    this._syncing = null;
    this._syncRun = 0; // which catch-up may retry: a newer one, or close(), ends the others
    this._syncRetry = null; // {timer, resolve} of the backoff a failed catch-up waits out
    // Fetches the counts again (they re-anchor unread and unseen): once more after the fetch in flight for
    // the frames that ask meanwhile; a failure waits for the next frame, request result or catch-up.
    this._recount = coalesced(() => this.fetchUnreadCount());
  }

  /** The gateway URL in use (or tried next). */
  get url() {
    return this.urls[this._urlIndex];
  }

  // ------------------------------------------------------------------------------------------ lifecycle

  /** Start connecting; resolves on the first `connected`, rejects if the client stops before. */
  connect() {
    if (this.state === "idle") this._open();
    return this.ready();
  }

  // ------------------------------------------------------------------------------------------- requests

  /**
   * Send a JSON-RPC request; resolves with its result. Waits for the connection while reconnecting;
   * the whole wait is bounded by timeoutMs. Rejects with HeraldRequestError or HeraldConnectionError.
   */
  request(method, params = {}, { timeoutMs = this.options.requestTimeoutMs } = {}) {
    const deadline = Date.now() + timeoutMs;
    const sent = this.ready().then(() => this._call(method, params, HeraldApi._left(method, deadline)));
    return HeraldApi._bounded(sent, method, timeoutMs);
  }

  _call(method, params, timeoutMs) {
    const ws = this._ws;
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new HeraldConnectionError(`${method}: no reply within the timeout`, "timeout"));
      }, Math.max(timeoutMs, 0));
      this._pending.set(id, { resolve, reject, timer });
      try {
        ws.send(JSON.stringify({ jsonrpc: "2.0", id, method, params: params ?? {} }));
      } catch (err) {
        this._pending.delete(id);
        clearTimeout(timer);
        reject(new HeraldConnectionError(`${method}: ${err.message}`, "disconnected"));
      }
    });
  }

  // -------------------------------------------------------------------------------------- connection

  async _open() {
    this._setState(this._everOpened ? "reconnecting" : "connecting");
    let token;
    try {
      token = await this.options.getToken();
      if (typeof token !== "string" || !token) throw new TypeError("getToken() did not return a JWT string");
    } catch (err) {
      this._stop(null, `getToken failed: ${err.message ?? err}`);
      return;
    }
    if (this.state === "closed") return;

    const url = this.url;
    let ws;
    try {
      ws = new this.options.WebSocket(url);
    } catch (err) {
      this._stop(null, `cannot open ${url}: ${err.message ?? err}`); // a malformed URL never heals
      return;
    }
    this._ws = ws;
    let opened = false;
    // Runs once per socket, from onclose or from the open timeout: some WebSocket implementations (Node
    // 20's undici) never fire close for a connection dropped during the handshake.
    const finish = (code, reason) => {
      clearTimeout(openTimer);
      ws.onopen = ws.onmessage = ws.onclose = null;
      if (this._ws === ws) this._onClose(code, reason, opened);
    };
    const openTimer = setTimeout(() => {
      try {
        ws.close(1000, "connection timed out");
      } catch {
        // Already closing.
      }
      finish(1006, "connection or authentication timed out");
    }, this.options.openTimeoutMs);

    ws.onopen = () => {
      this._call("auth", { token }, this.options.openTimeoutMs).catch(() => {
        // A refused token closes the socket with 4401; onclose decides what happens next.
      });
    };
    ws.onmessage = (message) => {
      let frame;
      try {
        frame = JSON.parse(message.data);
      } catch {
        return;
      }
      if (frame === null || typeof frame !== "object") return;
      if ("id" in frame && !("method" in frame)) {
        this._resolve(frame);
      } else if (frame.method === "connected") {
        clearTimeout(openTimer);
        opened = true;
        this._onConnected(frame.params ?? {}, token);
      } else if (typeof frame.method === "string") {
        this._onNotification(frame.method, frame.params);
      }
    };
    ws.onclose = (event) => finish(event.code, event.reason ?? "");
  }

  _onConnected(params, token) {
    this.userId = params.user_id ?? null;
    this.connectionId = params.connection_id ?? null;
    const serverSeq = params.last_seq;
    const resumeFrom = this.watermark;
    // First session: history is what list() is for; live starts now (_anchor). Without last_seq (the
    // worker did not answer in time) the catch-up below anchors it once the worker answers.
    if (typeof serverSeq === "number") this._anchor(serverSeq);
    this._counts.reset(); // a session's counts replace the last one's, whatever they were read with
    // Sync when no anchor is known yet, or when live frames came before it (a gap may lie below last_seq).
    const unanchored = this.watermark === null || (resumeFrom === null && this.watermark < serverSeq);
    this._takeCounts(params);
    const reconnected = this._everOpened || this._resume;
    this._everOpened = true;
    this._resume = false;
    this._openedAt = Date.now();
    this._authFailures = 0;
    this._setState("open");
    this._scheduleRefresh(token);
    this._emit("connected", params);
    for (const waiter of this._waiters) waiter.resolve();
    this._waiters.clear();
    const upToDate = typeof serverSeq === "number" && serverSeq <= resumeFrom;
    const behind = reconnected && resumeFrom !== null && !upToDate;
    if (behind || unanchored) {
      this._catchUp(); // supersedes a catch-up still retrying from the previous session
    } else if (this._syncRetry) {
      this._supersedeSync(); // the server has nothing past the watermark: nothing left to retry
    }
  }

  _onClose(code, reason, opened) {
    this._ws = null;
    this._clearRefresh();
    this._failPending("connection closed before the reply");
    if (this.state === "closed") return;
    this.closeCode = code;
    this.closeReason = reason;
    if (code === CLOSE_TOO_MANY_CONNECTIONS) {
      this._stop(code, reason || "too many connections for this user");
      return;
    }
    // A 4401 after a working session is an expired token: only refusals of fresh tokens count.
    this._authFailures = code === CLOSE_UNAUTHORIZED && !opened ? this._authFailures + 1 : 0;
    if (this._authFailures >= MAX_AUTH_FAILURES) {
      this._stop(code, reason || "authentication refused");
      return;
    }
    // Fail over: a gateway that never answered, or that is shutting down, is left for the next one.
    if (!opened || code === CLOSE_GOING_AWAY) this._urlIndex = (this._urlIndex + 1) % this.urls.length;
    if (opened && Date.now() - this._openedAt >= STABLE_SESSION_MS) this._attempt = 0;
    // An expired token or a shutdown ending a session retries at once, unless the attempt before failed too.
    const immediate = opened && this._attempt === 0 && (code === CLOSE_UNAUTHORIZED || code === CLOSE_GOING_AWAY);
    const retryIn = immediate ? 0 : backoffDelay(this._attempt, this.options.backoffBaseMs, this.options.backoffMaxMs);
    this._attempt += 1;
    this._emit("disconnected", { code, reason, retryIn });
    this._setState("reconnecting");
    this._later(() => this._open(), retryIn);
  }

  _resolve(frame) {
    const pending = this._pending.get(frame.id);
    if (!pending) return;
    this._pending.delete(frame.id);
    clearTimeout(pending.timer);
    if (frame.error) {
      const { code = -32603, message = "", data } = frame.error;
      pending.reject(new HeraldRequestError(code, message, data));
    } else {
      pending.resolve(frame.result);
    }
  }

  _onNotification(method, params) {
    if (method === "notification:new" && params && typeof params === "object") {
      this._deliver(params, false);
      return;
    }
    if (method.startsWith("notification:") && params) this._takeCounts(params);
    this._emit(method, params);
    if (method === "sync:required") this._catchUp();
  }

  /** Emit a notification unless this version of it was delivered already; advance the watermark.
   * A collapsed notification comes again with its id and a higher seq: it is emitted (the application
   * replaces the item by id) and the counts are fetched again rather than guessed, as for the frames
   * that may be counted already: a collapse (`count` > 1) into an item never delivered here (amendment 12:
   * unread does not move) and a broadcast frame (seq null; amendment 36: its copy may be in the counts). */
  _deliver(item, replayed) {
    const seq = item.seq;
    const held = this._aboveWatermark.size;
    if (typeof seq === "number") this.watermark = advance(this.watermark, this._aboveWatermark, seq);
    if (catchUpDue(this.watermark, this._aboveWatermark, held)) this._catchUp(); // to pass the gap holding them
    const version = takeVersion(this._seen, item);
    if (!version) return;
    if (version === "newer") {
      this._recount();
    } else if (!replayed && !this._counts.counted(seq)) {
      // Replayed items are counted by the unread-count fetch that ends every catch-up.
      if (typeof seq !== "number" || item.count > 1) {
        this._recount();
      } else {
        const unread = item.read_at == null && this.unreadCount !== null ? 1 : 0;
        const unseen = item.seen_at == null && this.unseenCount !== null ? 1 : 0;
        if (unread) this._setUnread(this.unreadCount + 1);
        if (unseen) this._setUnseen(this.unseenCount + 1);
        this._counts.added(seq, unread, unseen);
      }
    }
    this._emit("notification:new", item, replayed);
  }

  /** Take a count's last_seq: it gives a client without a watermark one (tracking.js `anchor`). */
  _anchor(lastSeq) {
    if (this.watermark === null) this.watermark = anchor(this._aboveWatermark, lastSeq);
  }

  /** Page notifications.sync from the watermark until has_more is false, then refresh the count.
   * A failed catch-up (e.g. 5003 while the worker reconnects) is retried with backoff until it succeeds
   * (amendment 33, as clients/python/herald_client/inbox.py does): what it would recover is otherwise
   * missing until the next reconnect. The retries stop when the client closes or a newer catch-up (another
   * `sync:required`, a new session) takes over; one catch-up runs at a time, from the current watermark. */
  _catchUp() {
    const run = this._supersedeSync();
    const current = () => this._syncRun === run && this.state !== "closed";
    const loop = async () => {
      for (let failures = 0; current(); failures += 1) {
        try {
          await this._catchUpOnce();
          return;
        } catch (err) {
          if (!current()) return; // closed, or a newer catch-up takes over from the same watermark
          const delay = backoffDelay(failures, this.options.backoffBaseMs, this.options.backoffMaxMs);
          console.warn(`herald: sync failed; retrying in ${Math.round(delay)} ms`, err);
          await new Promise((resolve) => {
            this._syncRetry = { timer: setTimeout(resolve, delay), resolve };
          });
          this._syncRetry = null;
        }
      }
    };
    this._syncing = (this._syncing ?? Promise.resolve()).then(loop);
    return this._syncing;
  }

  /** One catch-up; throws when a request failed (the watermark has not moved past what it missed). */
  async _catchUpOnce() {
    // No watermark yet (connected came without last_seq): the count's reply anchors it.
    const counted = this.watermark === null;
    if (counted) await this.fetchUnreadCount();
    let recovered = false;
    while (this.watermark !== null) {
      const page = await this.sync(this.watermark, SYNC_PAGE);
      const items = page.items ?? [];
      recovered ||= items.length > 0;
      for (const item of undelivered(this.watermark, this._aboveWatermark, items)) this._deliver(item, true);
      this.watermark = syncedUpTo(this.watermark, this._aboveWatermark, items[items.length - 1]?.seq);
      if (!page.has_more || !items.length) break;
    }
    // Re-anchor the count: it covers what the sync recovered and any frame counted twice between
    // `connected` and the sync.
    if (recovered || !counted) await this.fetchUnreadCount();
  }

  /** End the retries of the catch-up in progress (its waiting backoff at once); returns the new run's id. */
  _supersedeSync() {
    this._syncRun += 1;
    const retry = this._syncRetry;
    this._syncRetry = null;
    if (retry) {
      clearTimeout(retry.timer);
      retry.resolve();
    }
    return this._syncRun;
  }

  _scheduleRefresh(token) {
    this._clearRefresh();
    const exp = tokenExpiry(token);
    if (exp === null) return;
    const lifetime = exp * 1000 - Date.now();
    const delay = Math.max(lifetime - Math.min(this.options.refreshMarginMs, lifetime / 2), 0);
    if (delay > MAX_TIMER_MS) {
      // setTimeout fires at once past 2^31-1 ms (24.8 days): wait that long, then look again.
      this._refreshTimer = setTimeout(() => this._scheduleRefresh(token), MAX_TIMER_MS);
      return;
    }
    this._refreshTimer = setTimeout(async () => {
      let fresh;
      try {
        fresh = await this.options.getToken();
      } catch (err) {
        this._stop(null, `getToken failed: ${err.message ?? err}`);
        return;
      }
      try {
        await this._call("auth.refresh", { token: fresh }, this.options.requestTimeoutMs);
        this._scheduleRefresh(fresh);
      } catch {
        // Refused or disconnected: the server closes with 4401 at expiry and the reconnect re-authenticates.
      }
    }, delay);
  }

  _clearRefresh() {
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
  }

  _failPending(message) {
    for (const { reject, timer } of this._pending.values()) {
      clearTimeout(timer);
      reject(new HeraldConnectionError(message, "disconnected"));
    }
    this._pending.clear();
  }

  _stop(code, reason) {
    if (this.state === "closed") return;
    this.closeCode = code;
    this.closeReason = reason;
    this._setState("closed");
    for (const timer of this._timers) clearTimeout(timer);
    this._timers.clear();
    this._clearRefresh();
    this._supersedeSync(); // a catch-up waiting to retry ends now
    const ws = this._ws;
    this._ws = null;
    if (ws && ws.readyState <= 1) ws.close(1000, "client closed");
    this._failPending("client closed");
    for (const waiter of this._waiters) waiter.reject(this._closedError());
    this._waiters.clear();
    this._emit("closed", { code, reason });
  }
}
