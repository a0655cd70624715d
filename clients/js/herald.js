// @herald/client: Herald's browser client. One ES module, no dependencies, no build step (docs/clients.md).
//
//   import { createHeraldClient } from "@herald/client";      // or "/client/herald.js" from a gateway
//   const herald = createHeraldClient("ws://localhost:8765/notifications", { getToken });
//   herald.on("notification:new", (n) => console.log(n.title));
//   herald.connect();
//
// Two classes with one interface (HeraldApi: requests, helpers, events, counts):
// - HeraldClient holds one WebSocket.
// - SharedHeraldClient shares one HeraldClient between the tabs of a browser: the tabs elect a leader
//   (Web Locks when the browser has them, else heartbeats over BroadcastChannel); only the leader holds a
//   socket, and relays events to the other tabs and their requests to the gateway. When the leader tab
//   closes, another tab takes over and resumes from the last watermark the tabs saw, so nothing is missed.
// createHeraldClient() picks SharedHeraldClient when BroadcastChannel exists, else HeraldClient.
//
// Semantics (shared with the Python client, shared/client.py):
// - Authentication is always the first frame (`auth`); the token never goes in the URL. `getToken()` is
//   called on every (re)connect and again shortly before the token's `exp` to send `auth.refresh`.
// - Several gateway URLs may be given: a connection that fails before `connected`, or that the gateway
//   closes with 1001 (shutting down), moves on to the next URL.
// - Reconnects use exponential backoff with full jitter, reset once a gateway answers `connected`. 4401
//   gets a fresh token and reconnects (two refusals of a fresh token in a row, or getToken() throwing,
//   stop the client); 4008 stops the client; 1001, 1013, network loss and every other close reconnect.
// - Nothing missed, nothing twice: after a reconnect, and on `sync:required`, the client pages
//   `notifications.sync` from its watermark — the highest seq below which nothing can be missing (it
//   advances over contiguous seqs of live frames and to the end of each sync page) — and drops
//   notifications whose id it already delivered (a higher seq of a known id is a collapsed notification's
//   new version; a live broadcast frame, seq null, and its stored copy with a seq are one). A failed catch-up
//   is retried with backoff until it succeeds, the client closes or a newer catch-up takes over.
// - `unreadCount` / `unseenCount` follow `connected`, the `notification:*` frames and request results.
//
// Events: the server's notification methods (`connected`, `notification:new|read|unread|deleted|seen|
// archived|unarchived|acted`, `preferences:updated`, `sync:required`) and the client's own `unread`
// ({count}), `unseen` ({count}), `state` ({state}), `disconnected` ({code, reason, retryIn}), `closed`
// ({code, reason}) and, for SharedHeraldClient, `role` ({role}). Listeners get (params, meta) where
// meta.replayed is true for notifications that a sync recovered.

const CLOSE_UNAUTHORIZED = 4401;
const CLOSE_TOO_MANY_CONNECTIONS = 4008;
const CLOSE_GOING_AWAY = 1001;
const MAX_AUTH_FAILURES = 2;
const SEEN_IDS = 10000;

/** Record the delivery of `item` in `seen` (id → highest seq, null for a live broadcast frame): "new" for
 * an id not seen before, "newer" for a higher seq of a known id (a collapsed notification's new version),
 * false for a repeat. A null seq is new only for an unknown id, and a live broadcast frame (no seq, amendment
 * 9) followed by its stored copy (same id, the user's seq) is one version: the copy is a repeat whose seq is
 * kept for later versions (the same rule as clients/python/herald_client/tracking.py). */
function takeVersion(seen, item) {
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
const SYNC_PAGE = 500;
const COUNTS = ["unread_count", "unseen_count"];

/** A JSON-RPC error reply: `code` (docs/protocol.md), `message`, optional `data` (e.g. the bad field). */
export class HeraldRequestError extends Error {
  constructor(code, message, data) {
    super(`${code}: ${message}`);
    this.name = "HeraldRequestError";
    this.code = code;
    this.data = data;
    this.serverMessage = message;
  }
}

/** A request got no reply in time, the connection dropped under it, or the client is closed. */
export class HeraldConnectionError extends Error {
  constructor(message, kind) {
    super(message);
    this.name = "HeraldConnectionError";
    this.kind = kind; // "timeout" | "disconnected" | "closed"
  }
}

function decodeClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
  } catch {
    return null;
  }
}

/** The `exp` claim (Unix seconds) of a JWT, read without verification; null when absent. */
export function tokenExpiry(token) {
  const claims = decodeClaims(token);
  return claims && typeof claims.exp === "number" ? claims.exp : null;
}

/** Full-jitter exponential backoff in ms: uniform in [0, min(cap, base * 2^attempt)]. */
export function backoffDelay(attempt, baseMs, capMs) {
  return Math.random() * Math.min(capMs, baseMs * 2 ** Math.min(attempt, 30));
}

/** A base64url string (a VAPID public key) as the bytes PushManager.subscribe wants. */
export function base64UrlToBytes(text) {
  const base64 = text.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (text.length % 4)) % 4);
  return Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
}

function urlList(urls) {
  const list = (Array.isArray(urls) ? urls : [urls]).filter((url) => typeof url === "string" && url);
  if (!list.length) throw new TypeError("at least one gateway URL is required");
  return list;
}

const DEFAULTS = {
  requestTimeoutMs: 10000,
  backoffBaseMs: 500,
  backoffMaxMs: 30000,
  refreshMarginMs: 60000,
  openTimeoutMs: 15000,
};

/**
 * What both clients offer: events, counts and the typed helpers over `request` (docs/protocol.md §5,
 * §9, §10). Subclasses implement `request`, `connect`, `ready` and `close`.
 */
export class HeraldApi {
  constructor() {
    this.state = "idle";
    this.userId = null;
    this.connectionId = null;
    this.unreadCount = null;
    this.unseenCount = null;
    this.watermark = null;
    this.closeCode = null;
    this.closeReason = "";
    this._listeners = new Map();
    this.preferences = {
      get: () => this.request("preferences.get"),
      update: (patch) => this.request("preferences.update", patch),
      reset: () => this.request("preferences.reset"),
    };
    this.push = {
      /** push.vapid_key → the base64url public key. */
      vapidKey: async () => (await this.request("push.vapid_key")).public_key,
      /** Subscribe `registration` (a ServiceWorkerRegistration) and register it: {id, subscription}. */
      subscribe: async (registration, { device } = {}) => {
        const manager = registration?.pushManager;
        if (!manager) throw new TypeError("push.subscribe needs a ServiceWorkerRegistration with pushManager");
        let subscription = await manager.getSubscription();
        if (!subscription) {
          const key = await this.push.vapidKey();
          subscription = await manager.subscribe({ userVisibleOnly: true, applicationServerKey: base64UrlToBytes(key) });
        }
        const json = subscription.toJSON();
        const params = { endpoint: json.endpoint, keys: json.keys };
        if (json.expirationTime != null) params.expirationTime = json.expirationTime;
        if (device) params.device = device;
        const { id } = await this.request("push.subscribe", params);
        return { id, subscription };
      },
      /** Unsubscribe the browser (registration, else the ready service worker's) and tell the server. */
      unsubscribe: async (registration) => {
        const reg = registration ?? (await globalThis.navigator?.serviceWorker?.ready);
        const subscription = await reg?.pushManager?.getSubscription();
        if (!subscription) return { removed: 0 };
        const { endpoint } = subscription;
        await subscription.unsubscribe();
        return this.request("push.unsubscribe", { endpoint });
      },
      list: () => this.request("push.list"),
    };
  }

  // --------------------------------------------------------------------------------------------- events

  /** Subscribe to an event ("*" = all, fn gets (params, meta) with meta.method); returns an unsubscriber. */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    this._listeners.get(event)?.delete(fn);
  }

  _emit(method, params, replayed = false) {
    const meta = { method, replayed };
    for (const key of [method, "*"]) {
      for (const fn of [...(this._listeners.get(key) ?? [])]) {
        try {
          fn(params, meta);
        } catch (err) {
          console.error(`herald: listener for ${method} failed`, err);
        }
      }
    }
  }

  _setState(state) {
    if (state === this.state) return;
    this.state = state;
    this._emit("state", { state });
  }

  _setUnread(count) {
    if (typeof count !== "number" || count === this.unreadCount) return;
    this.unreadCount = count;
    this._emit("unread", { count });
  }

  _setUnseen(count) {
    if (typeof count !== "number" || count === this.unseenCount) return;
    this.unseenCount = count;
    this._emit("unseen", { count });
  }

  _takeCounts(result) {
    if (!result || typeof result !== "object") return;
    this._setUnread(result.unread_count);
    this._setUnseen(result.unseen_count);
  }

  // -------------------------------------------------------------------------------------------- helpers

  /** notifications.list: {items (newest first), next_cursor, total, unread_count}. */
  async list(params = {}) {
    const result = await this.request("notifications.list", params);
    this._takeCounts(result);
    return result;
  }

  /** notifications.sync, one page, no side effects: {items (seq ascending), has_more}. */
  sync(since, limit) {
    return this.request("notifications.sync", limit === undefined ? { since } : { since, limit });
  }

  /** notifications.unread_count → the unread count (also updates unreadCount and unseenCount, and anchors
   * a missing watermark at the reply's last_seq: amendment 42). */
  async fetchUnreadCount() {
    const result = await this.request("notifications.unread_count");
    this._setUnread(result.count);
    this._setUnseen(result.unseen_count);
    if (typeof result.last_seq === "number") this._anchor(result.last_seq);
    return result.count;
  }

  /** Only the client that holds the socket keeps a watermark of its own. */
  _anchor(_lastSeq) {}

  markRead(ids) {
    return this._counting("notifications.mark_read", { ids });
  }

  markUnread(ids) {
    return this._counting("notifications.mark_unread", { ids });
  }

  markAllRead() {
    return this._counting("notifications.mark_all_read", {});
  }

  /** notifications.mark_seen: `markSeen(ids)` or `markSeen("all")`. */
  markSeen(ids) {
    return this._counting("notifications.mark_seen", ids === "all" ? { all: true } : { ids });
  }

  delete(ids) {
    return this._counting("notifications.delete", { ids });
  }

  archive(ids) {
    return this._counting("notifications.archive", { ids });
  }

  unarchive(ids) {
    return this._counting("notifications.unarchive", { ids });
  }

  /** notifications.act: record the user's choice of one of the notification's actions (marks it read). */
  act(id, actionId) {
    return this._counting("notifications.act", { id, action_id: actionId });
  }

  /** Admin tokens only (else HeraldRequestError 4003): {accepted, event_id}. */
  broadcast({ title, message, type, data }) {
    const params = { title, message };
    if (type !== undefined) params.type = type;
    if (data !== undefined) params.data = data;
    return this.request("notifications.broadcast", params);
  }

  ping() {
    return this.request("ping");
  }

  async _counting(method, params) {
    const result = await this.request(method, params);
    this._takeCounts(result);
    return result;
  }

  /** The ms left before `deadline`; throws the timeout error when none is (never send a late request). */
  /** Resolves when the client is open (now or after the ongoing reconnect); both clients keep `_waiters`. */
  ready() {
    if (this.state === "open") return Promise.resolve();
    if (this.state === "closed") return Promise.reject(this._closedError());
    return new Promise((resolve, reject) => this._waiters.add({ resolve, reject }));
  }

  /** Stop for good: close the socket, reject pending requests, emit `closed`. */
  close() {
    this._stop(null, "closed by the client");
  }

  static _left(method, deadline) {
    const left = deadline - Date.now();
    if (left <= 0) throw new HeraldConnectionError(`${method}: no reply within the timeout`, "timeout");
    return left;
  }

  /** Race `promise` against a timeout that rejects with a HeraldConnectionError. */
  static _bounded(promise, method, timeoutMs) {
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(
        () => reject(new HeraldConnectionError(`${method}: no reply within ${timeoutMs} ms`, "timeout")),
        Math.max(timeoutMs, 0),
      );
    });
    return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
  }
}

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
    this._timers = new Set();
    this._refreshTimer = null;
    this._everOpened = false;
    this._syncing = null;
    this._syncRun = 0; // which catch-up may retry: a newer one, or close(), ends the others
    this._syncRetry = null; // {timer, resolve} of the backoff a failed catch-up waits out
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
    // Sync when no anchor is known yet, or when live frames came before it (a gap may lie below last_seq).
    const unanchored = this.watermark === null || (resumeFrom === null && this.watermark < serverSeq);
    this._takeCounts(params);
    const reconnected = this._everOpened || this._resume;
    this._everOpened = true;
    this._resume = false;
    this._attempt = 0;
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
    // An expired token or a server restart after a working session retries at once.
    const retryIn =
      opened && (code === CLOSE_UNAUTHORIZED || code === CLOSE_GOING_AWAY)
        ? 0
        : backoffDelay(this._attempt, this.options.backoffBaseMs, this.options.backoffMaxMs);
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
   * replaces the item by id) and the counts are fetched again rather than guessed. */
  _deliver(item, replayed) {
    if (typeof item.seq === "number") this._advance(item.seq);
    const version = takeVersion(this._seen, item);
    if (!version) return;
    if (version === "newer") {
      this.fetchUnreadCount().catch(() => {}); // re-anchors unread and unseen; a failure waits for the next
    } else if (!replayed) {
      // Replayed items are counted by the unread-count fetch that ends every catch-up.
      if (item.read_at == null && this.unreadCount !== null) this._setUnread(this.unreadCount + 1);
      if (item.seen_at == null && this.unseenCount !== null) this._setUnseen(this.unseenCount + 1);
    }
    this._emit("notification:new", item, replayed);
  }

  _advance(seq) {
    if (this.watermark !== null && seq <= this.watermark) return;
    // Without a watermark the seqs seen are kept (bounded) for the anchor.
    if (this.watermark === null && this._aboveWatermark.size >= SEEN_IDS) return;
    this._aboveWatermark.add(seq);
    this._moveOverSeen();
  }

  _moveOverSeen() {
    if (this.watermark === null) return;
    while (this._aboveWatermark.has(this.watermark + 1)) {
      this.watermark += 1;
      this._aboveWatermark.delete(this.watermark);
    }
  }

  /** Give a client without a watermark one: the server's last_seq, read after this connection was
   * attached (so everything after it arrives live), or, if live frames came before it, just below the
   * lowest one seen, so the sync that follows recovers any lost between them (amendment 42). */
  _anchor(lastSeq) {
    if (this.watermark !== null) return;
    let mark = lastSeq;
    for (const seq of this._aboveWatermark) mark = Math.min(mark, seq - 1);
    this.watermark = mark;
    for (const seq of this._aboveWatermark) if (seq <= mark) this._aboveWatermark.delete(seq);
    this._moveOverSeen();
  }

  /** Page notifications.sync from the watermark until has_more is false, then refresh the count.
   * A failed catch-up (e.g. 5003 while the worker reconnects) is retried with backoff until it succeeds
   * (amendment 33, as clients/python/herald_client/client.py does): what it would recover is otherwise
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
      for (const item of items) this._deliver(item, true);
      const last = items.length ? items[items.length - 1].seq : null;
      if (typeof last === "number" && last > this.watermark) {
        // Sync returns every seq > since, so everything up to `last` is known now.
        this.watermark = last;
        for (const seq of this._aboveWatermark) if (seq <= last) this._aboveWatermark.delete(seq);
      }
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

  _later(fn, ms) {
    const timer = setTimeout(() => {
      this._timers.delete(timer);
      fn();
    }, ms);
    this._timers.add(timer);
  }

  _failPending(message) {
    for (const { reject, timer } of this._pending.values()) {
      clearTimeout(timer);
      reject(new HeraldConnectionError(message, "disconnected"));
    }
    this._pending.clear();
  }

  _closedError() {
    return new HeraldConnectionError(`client closed (${this.closeCode ?? "-"} ${this.closeReason})`, "closed");
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

// ------------------------------------------------------------------------------- one socket per browser

const SNAPSHOT = ["state", "userId", "connectionId", "unreadCount", "unseenCount", "watermark", "closeCode", "closeReason"];
// Events that only restate the snapshot: followers derive them from it, so they are not relayed twice.
const DERIVED = new Set(["state", "unread", "unseen"]);

function randomId() {
  return globalThis.crypto?.randomUUID?.() ?? `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

/**
 * One HeraldClient per browser, shared by its tabs over BroadcastChannel (see the top of this file).
 * Same interface as HeraldClient, plus `role` ("idle" | "electing" | "leader" | "follower"), `isLeader`
 * and `tabId`. Options: HeraldClient's, plus shareKey (tabs with the same key share a socket; default: the
 * gateway URLs and the token's `sub`, so two users signed in in one browser never share),
 * heartbeatMs (1000, only without Web Locks), BroadcastChannel and locks (default: the globals).
 */
export class SharedHeraldClient extends HeraldApi {
  constructor(urls, options) {
    super();
    if (!options || typeof options.getToken !== "function") throw new TypeError("options.getToken is required");
    this.urls = urlList(urls);
    this.options = {
      ...DEFAULTS,
      heartbeatMs: 1000,
      BroadcastChannel: globalThis.BroadcastChannel,
      locks: globalThis.navigator?.locks,
      ...options,
    };
    if (typeof this.options.BroadcastChannel !== "function") throw new TypeError("BroadcastChannel is not available");
    this.tabId = randomId();
    this.role = "idle";
    this.leaderId = null;
    this.channelName = null;
    this._inner = null;
    this._channel = null;
    this._waiters = new Set();
    this._pending = new Map(); // request id → {resolve, reject, leader}
    this._nextId = 1;
    this._seen = new Map();
    this._release = null; // resolves the held Web Lock
    this._abort = null; // aborts a queued Web Lock request
    this._timers = new Set();
    this._lastBeat = 0;
    this._claiming = null;
    this._locked = false; // holds the Web Lock: no other tab can lead
    // Each leadership has a term, later than every term this tab saw: with Web Locks, a message of a lower
    // term than the leader's is a late one of a leader that already left (the lock can pass to the next tab
    // before the other tabs have read the old leader's last messages and its `bye`).
    this._term = 0; // this tab's, while it leads
    this._leaderTerm = 0; // the highest term seen
    // A page that may come back from the back/forward cache keeps its role; a closing one hands over.
    this._onPageHide = (event) => {
      if (!event?.persisted) this._leave();
    };
  }

  get url() {
    return this._inner?.url ?? this.urls[0];
  }

  get isLeader() {
    return this.role === "leader";
  }

  connect() {
    if (this.state === "idle") this._start();
    return this.ready();
  }

  request(method, params = {}, { timeoutMs = this.options.requestTimeoutMs } = {}) {
    const deadline = Date.now() + timeoutMs;
    const sent = this.ready().then(() => {
      const left = HeraldApi._left(method, deadline);
      if (this.role === "leader" && this._inner) return this._inner.request(method, params, { timeoutMs: left });
      return this._remote(method, params, left);
    });
    return HeraldApi._bounded(sent, method, timeoutMs);
  }

  // ------------------------------------------------------------------------------------------ election

  async _start() {
    this._setState("connecting");
    let key = this.options.shareKey;
    if (!key) {
      try {
        const token = await this.options.getToken();
        key = decodeClaims(token)?.sub ?? token;
      } catch (err) {
        this._stop(null, `getToken failed: ${err.message ?? err}`);
        return;
      }
    }
    if (this.state === "closed") return;
    this.channelName = `herald:${this.urls.join(",")}:${key}`;
    this._channel = new this.options.BroadcastChannel(this.channelName);
    this._channel.onmessage = (event) => this._onMessage(event.data);
    globalThis.addEventListener?.("pagehide", this._onPageHide);
    this._setRole("electing");
    this._post({ t: "hello" });
    const locks = this.options.locks;
    if (locks && typeof locks.request === "function") {
      this._abort = typeof AbortController === "function" ? new AbortController() : null;
      const lockOptions = this._abort ? { signal: this._abort.signal } : {};
      locks
        .request(this.channelName, lockOptions, () => {
          if (this.state === "closed") return undefined;
          this._abort = null;
          this._locked = true;
          this._lead();
          return new Promise((resolve) => {
            this._release = resolve;
          });
        })
        .catch(() => {
          // Aborted by close() while queued.
        });
    } else {
      this._heartbeat();
    }
  }

  /** Without Web Locks: the leader beats; a tab that hears no beat for 3 beats claims, lowest id wins. */
  _heartbeat() {
    const beat = this.options.heartbeatMs;
    this._lastBeat = Date.now();
    const tick = () => {
      if (this.state === "closed") return;
      if (this.role === "leader") {
        this._post({ t: "beat" });
      } else if (!this._claiming && Date.now() - this._lastBeat > 3 * beat) {
        this._claim();
      }
      this._later(tick, beat);
    };
    this._later(tick, beat);
  }

  _claim() {
    if (this.role === "leader" || this._claiming) return;
    this._claiming = { beaten: false };
    const claim = this._claiming;
    this._post({ t: "claim" });
    this._later(() => {
      if (this._claiming !== claim) return;
      this._claiming = null;
      if (!claim.beaten && this.state !== "closed") this._lead();
      else this._lastBeat = Date.now();
    }, this.options.heartbeatMs);
  }

  _lead() {
    if (this.role === "leader" || this.state === "closed") return;
    this._term = Math.max(Date.now(), this._leaderTerm + 1);
    this._leaderTerm = this._term;
    this._setRole("leader");
    this._leaderChanged(this.tabId);
    const { BroadcastChannel: _b, locks: _l, shareKey: _k, heartbeatMs: _h, ...clientOptions } = this.options;
    // Resume from the last watermark the tabs saw: what arrived while no tab held a socket is synced.
    const inner = new HeraldClient(this.urls, { ...clientOptions, watermark: this.watermark ?? undefined });
    this._inner = inner;
    inner.on("*", (params, meta) => {
      if (this._inner !== inner) return;
      const snapshot = this._snapshotOf(inner);
      this._post({ t: "event", method: meta.method, params, replayed: meta.replayed, snapshot });
      this._receive(meta.method, params, meta.replayed, snapshot);
    });
    this._post({ t: "leader", snapshot: this._snapshotOf(inner) });
    inner.connect().catch(() => {
      // `closed` was relayed to every tab.
    });
  }

  _resign() {
    // Another tab leads too (heartbeat mode only): the one with the lower id keeps the socket.
    const inner = this._inner;
    this._inner = null;
    this._setRole("follower");
    if (inner) inner.close();
  }

  /** The leader leaves (close(), pagehide): hand over at once rather than after a timeout. */
  _leave() {
    if (this.role !== "leader") return;
    const inner = this._inner;
    this._inner = null;
    this._post({ t: "bye" });
    this._release?.();
    this._release = null;
    this._locked = false;
    inner?.close();
  }

  _setRole(role) {
    if (role === this.role) return;
    this.role = role;
    this._emit("role", { role });
  }

  // ---------------------------------------------------------------------------------------- messages

  _post(message) {
    try {
      this._channel?.postMessage({ ...message, from: this.tabId, term: this.role === "leader" ? this._term : 0 });
    } catch (err) {
      console.warn("herald: cannot post to the other tabs", err);
    }
  }

  _onMessage(message) {
    if (!message || typeof message !== "object" || message.from === this.tabId || this.state === "closed") return;
    const { t, from } = message;
    const term = typeof message.term === "number" ? message.term : 0;
    if ((t === "leader" || t === "beat" || t === "event" || t === "bye") && this._stale(term)) return;
    if (t === "hello") {
      if (this.role === "leader" && this._inner) this._post({ t: "leader", snapshot: this._snapshotOf(this._inner) });
    } else if (t === "leader" || t === "beat" || t === "event") {
      this._lastBeat = Date.now();
      if (this._claiming) this._claiming.beaten = true;
      if (this.role === "leader") {
        if (this._locked) return; // a stale message of the previous leader
        if (from < this.tabId) this._resign();
        else {
          if (t !== "beat") this._post({ t: "leader", snapshot: this._snapshotOf(this._inner) });
          return;
        }
      }
      if (this.role !== "leader") this._setRole("follower");
      this._leaderTerm = Math.max(this._leaderTerm, term);
      if (from !== this.leaderId) this._leaderChanged(from);
      if (t === "event") this._receive(message.method, message.params, message.replayed, message.snapshot);
      else if (message.snapshot) this._apply(message.snapshot);
    } else if (t === "claim") {
      if (this.role === "leader") this._post({ t: "beat" });
      else if (this._claiming && from < this.tabId) this._claiming.beaten = true;
    } else if (t === "bye") {
      if (from === this.leaderId) {
        this.leaderId = null;
        this._failRemote("the leader tab went away before the reply");
        this._setState("reconnecting"); // requests wait for the next leader
        if (!this.options.locks?.request) this._claim();
      }
    } else if (t === "req") {
      if (this.role === "leader" && message.to === this.tabId) this._serve(message);
    } else if (t === "res") {
      if (message.to === this.tabId) this._answered(message);
    }
  }

  async _serve({ id, from, method, params, timeoutMs }) {
    const inner = this._inner;
    try {
      const result = await inner.request(method, params, { timeoutMs });
      this._post({ t: "res", to: from, id, result });
    } catch (err) {
      this._post({
        t: "res",
        to: from,
        id,
        error: { name: err.name, code: err.code, message: err.serverMessage ?? err.message, data: err.data, kind: err.kind },
      });
    }
  }

  _remote(method, params, timeoutMs) {
    const id = this._nextId++;
    const leader = this.leaderId;
    return new Promise((resolve, reject) => {
      if (!leader) {
        reject(new HeraldConnectionError(`${method}: no leader tab`, "disconnected"));
        return;
      }
      this._pending.set(id, { resolve, reject, leader });
      this._later(() => this._pending.delete(id), Math.max(timeoutMs, 0) + 1000);
      this._post({ t: "req", to: leader, id, method, params: params ?? {}, timeoutMs });
    });
  }

  _answered({ id, result, error }) {
    const pending = this._pending.get(id);
    if (!pending) return;
    this._pending.delete(id);
    if (!error) pending.resolve(result);
    else if (error.name === "HeraldRequestError") pending.reject(new HeraldRequestError(error.code, error.message, error.data));
    else pending.reject(new HeraldConnectionError(error.message, error.kind ?? "disconnected"));
  }

  /** A late message of a leader that already handed over (Web Locks only: one leader at a time, in term order). */
  _stale(term) {
    return Boolean(this.options.locks?.request) && term > 0 && term < this._leaderTerm;
  }

  _leaderChanged(leader) {
    this.leaderId = leader;
    this._failRemote("the leader tab changed before the reply");
  }

  _failRemote(message) {
    for (const [id, pending] of this._pending) {
      if (pending.leader === this.leaderId) continue;
      this._pending.delete(id);
      pending.reject(new HeraldConnectionError(message, "disconnected"));
    }
  }

  // ------------------------------------------------------------------------------------------- state

  _snapshotOf(client) {
    const snapshot = {};
    for (const key of SNAPSHOT) snapshot[key] = client[key];
    return snapshot;
  }

  _apply(snapshot) {
    if (!snapshot) return;
    this.userId = snapshot.userId;
    this.connectionId = snapshot.connectionId;
    this.watermark = snapshot.watermark;
    this.closeCode = snapshot.closeCode;
    this.closeReason = snapshot.closeReason;
    this._setUnread(snapshot.unreadCount);
    this._setUnseen(snapshot.unseenCount);
    if (snapshot.state === "closed") return; // handled by the relayed `closed` event
    this._setState(snapshot.state === "idle" ? "connecting" : snapshot.state);
    if (this.state === "open") {
      for (const waiter of this._waiters) waiter.resolve();
      this._waiters.clear();
    }
  }

  /** An event of the leader's client (relayed, or this tab's own): update the mirror, then emit. */
  _receive(method, params, replayed, snapshot) {
    if (method === "closed") {
      this._stop(params?.code ?? null, params?.reason ?? "the shared connection closed");
      return;
    }
    this._apply(snapshot);
    if (DERIVED.has(method)) return;
    if (method === "notification:new" && params) {
      // A tab that took over re-syncs from the watermark: drop what this tab showed already.
      if (!takeVersion(this._seen, params)) return;
    }
    this._emit(method, params, replayed);
  }

  _later(fn, ms) {
    const timer = setTimeout(() => {
      this._timers.delete(timer);
      fn();
    }, ms);
    this._timers.add(timer);
  }

  _closedError() {
    return new HeraldConnectionError(`client closed (${this.closeCode ?? "-"} ${this.closeReason})`, "closed");
  }

  _stop(code, reason) {
    if (this.state === "closed") return;
    this._leave();
    this._abort?.abort();
    this._abort = null;
    globalThis.removeEventListener?.("pagehide", this._onPageHide);
    for (const timer of this._timers) clearTimeout(timer);
    this._timers.clear();
    this.closeCode = code;
    this.closeReason = reason;
    this._setState("closed");
    this._setRole("idle");
    for (const pending of this._pending.values()) pending.reject(new HeraldConnectionError("client closed", "closed"));
    this._pending.clear();
    for (const waiter of this._waiters) waiter.reject(this._closedError());
    this._waiters.clear();
    try {
      this._channel?.close();
    } catch {
      // Already closed.
    }
    this._channel = null;
    this._emit("closed", { code, reason });
  }
}

/**
 * The client a browser app wants: SharedHeraldClient (one socket for all tabs) when BroadcastChannel
 * exists and `options.shareTabs` is not false, else HeraldClient (one socket per tab).
 */
export function createHeraldClient(urls, options = {}) {
  const Channel = "BroadcastChannel" in options ? options.BroadcastChannel : globalThis.BroadcastChannel;
  if (options.shareTabs !== false && typeof Channel === "function") return new SharedHeraldClient(urls, options);
  return new HeraldClient(urls, options);
}
