// Herald browser client: one ES module, no dependencies, no build step (PROTOCOL §5).
//
//   import { HeraldClient } from "/client/herald.js";
//   const herald = new HeraldClient("ws://localhost:8765/notifications", { getToken });
//   herald.on("notification:new", (n) => console.log(n.title));
//   herald.connect();
//
// Semantics (shared with the Python client, shared/client.py):
// - Authentication is always the first frame (`auth`); the token never goes in the URL. `getToken()` is
//   called on every (re)connect and again shortly before the token's `exp` to send `auth.refresh`.
// - Reconnects use exponential backoff with full jitter. 4401 gets a fresh token and reconnects (two
//   refusals of a fresh token in a row, or getToken() throwing, stop the client); 4008 stops the client;
//   1001, 1013, network loss and every other close reconnect.
// - Nothing missed, nothing twice: after a reconnect, and on `sync:required`, the client pages
//   `notifications.sync` from its watermark — the highest seq below which nothing can be missing (it
//   advances over contiguous seqs of live frames and to the end of each sync page) — and drops
//   notifications whose id it already delivered.
// - `unreadCount` follows `connected`, the `notification:*` frames and request results.
//
// Events: the server's notification methods (`connected`, `notification:new`, `notification:read`,
// `notification:unread`, `notification:deleted`, `preferences:updated`, `sync:required`) and the client's
// own `unread` ({count}), `state` ({state}), `disconnected` ({code, reason, retryIn}) and `closed`
// ({code, reason}). Listeners get (params, meta) where meta.replayed is true for notifications that a
// sync recovered. Each tab runs its own client: the server keeps every connection of a user in step.

const CLOSE_UNAUTHORIZED = 4401;
const CLOSE_TOO_MANY_CONNECTIONS = 4008;
const MAX_AUTH_FAILURES = 2;
const SEEN_IDS = 10000;
const SYNC_PAGE = 500;

/** A JSON-RPC error reply: `code` (PROTOCOL §5), `message`, optional `data` (e.g. the bad field). */
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

/** The `exp` claim (Unix seconds) of a JWT, read without verification; null when absent. */
export function tokenExpiry(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
    return typeof claims.exp === "number" ? claims.exp : null;
  } catch {
    return null;
  }
}

/** Full-jitter exponential backoff in ms: uniform in [0, min(cap, base * 2^attempt)]. */
export function backoffDelay(attempt, baseMs, capMs) {
  return Math.random() * Math.min(capMs, baseMs * 2 ** Math.min(attempt, 30));
}

export class HeraldClient {
  /**
   * @param {string} url ws(s)://host:port/notifications
   * @param {object} options getToken (required, may be async), requestTimeoutMs (10000),
   *   backoffBaseMs (500), backoffMaxMs (30000), refreshMarginMs (60000), openTimeoutMs (15000),
   *   WebSocket (constructor; defaults to the global one).
   */
  constructor(url, options) {
    if (!options || typeof options.getToken !== "function") throw new TypeError("options.getToken is required");
    this.url = url;
    this.options = {
      requestTimeoutMs: 10000,
      backoffBaseMs: 500,
      backoffMaxMs: 30000,
      refreshMarginMs: 60000,
      openTimeoutMs: 15000,
      WebSocket: globalThis.WebSocket,
      ...options,
    };
    this.state = "idle";
    this.userId = null;
    this.connectionId = null;
    this.unreadCount = null;
    this.watermark = null;
    this.closeCode = null;
    this.closeReason = "";
    this.preferences = {
      get: () => this.request("preferences.get"),
      update: (patch) => this.request("preferences.update", patch),
      reset: () => this.request("preferences.reset"),
    };

    this._ws = null;
    this._nextId = 1;
    this._pending = new Map();
    this._listeners = new Map();
    this._seen = new Set();
    this._aboveWatermark = new Set();
    this._waiters = new Set();
    this._attempt = 0;
    this._authFailures = 0;
    this._timers = new Set();
    this._refreshTimer = null;
    this._everOpened = false;
    this._syncing = null;
  }

  // ------------------------------------------------------------------------------------------ lifecycle

  /** Start connecting; resolves on the first `connected`, rejects if the client stops before. */
  connect() {
    if (this.state === "idle") this._open();
    return this.ready();
  }

  /** Resolves when the client is open (now or after the ongoing reconnect). */
  ready() {
    if (this.state === "open") return Promise.resolve();
    if (this.state === "closed") return Promise.reject(this._closedError());
    return new Promise((resolve, reject) => this._waiters.add({ resolve, reject }));
  }

  /** Stop for good: close the socket, reject pending requests, emit `closed`. */
  close() {
    this._stop(null, "closed by the client");
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
      for (const fn of this._listeners.get(key) ?? []) {
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

  // ------------------------------------------------------------------------------------------- requests

  /**
   * Send a JSON-RPC request; resolves with its result. Waits for the connection while reconnecting;
   * the whole wait is bounded by timeoutMs. Rejects with HeraldRequestError or HeraldConnectionError.
   */
  async request(method, params = {}, { timeoutMs = this.options.requestTimeoutMs } = {}) {
    const deadline = Date.now() + timeoutMs;
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(
        () => reject(new HeraldConnectionError(`${method}: no reply within ${timeoutMs} ms`, "timeout")),
        timeoutMs,
      );
    });
    try {
      await Promise.race([this.ready(), timeout]);
      return await Promise.race([this._call(method, params, deadline - Date.now()), timeout]);
    } finally {
      clearTimeout(timer);
    }
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

  // Typed helpers for the client methods of PROTOCOL §5.

  /** notifications.list: {items (newest first), next_cursor, total, unread_count}. */
  async list(params = {}) {
    const result = await this.request("notifications.list", params);
    this._setUnread(result.unread_count);
    return result;
  }

  /** notifications.sync, one page, no side effects: {items (seq ascending), has_more}. */
  sync(since, limit) {
    return this.request("notifications.sync", limit === undefined ? { since } : { since, limit });
  }

  /** notifications.unread_count → the count (also updates unreadCount). */
  async fetchUnreadCount() {
    const { count } = await this.request("notifications.unread_count");
    this._setUnread(count);
    return count;
  }

  markRead(ids) {
    return this._counting("notifications.mark_read", { ids });
  }

  markUnread(ids) {
    return this._counting("notifications.mark_unread", { ids });
  }

  markAllRead() {
    return this._counting("notifications.mark_all_read", {});
  }

  delete(ids) {
    return this._counting("notifications.delete", { ids });
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
    this._setUnread(result.unread_count);
    return result;
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

    let ws;
    try {
      ws = new this.options.WebSocket(this.url);
    } catch (err) {
      this._stop(null, `cannot open ${this.url}: ${err.message ?? err}`); // a malformed URL never heals
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
    // First session: history is what list() is for; live starts now.
    if (this.watermark === null && typeof serverSeq === "number") this.watermark = serverSeq;
    this._setUnread(params.unread_count);
    const reconnected = this._everOpened;
    this._everOpened = true;
    this._attempt = 0;
    this._authFailures = 0;
    this._setState("open");
    this._scheduleRefresh(token);
    this._emit("connected", params);
    for (const waiter of this._waiters) waiter.resolve();
    this._waiters.clear();
    if (reconnected && resumeFrom !== null && !(typeof serverSeq === "number" && serverSeq <= resumeFrom)) {
      this._catchUp();
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
    // An expired token or a server restart after a working session retries at once.
    const retryIn =
      opened && (code === CLOSE_UNAUTHORIZED || code === 1001)
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
    if (method.startsWith("notification:") && params) this._setUnread(params.unread_count);
    this._emit(method, params);
    if (method === "sync:required") this._catchUp();
  }

  /** Emit a notification unless its id was delivered already; advance the watermark. */
  _deliver(item, replayed) {
    if (typeof item.seq === "number") this._advance(item.seq);
    const id = String(item.id);
    if (this._seen.has(id)) return;
    this._seen.add(id);
    if (this._seen.size > SEEN_IDS) this._seen.delete(this._seen.values().next().value);
    // Replayed items are counted by the unread-count fetch that ends every catch-up.
    if (!replayed && item.read_at == null && this.unreadCount !== null) this._setUnread(this.unreadCount + 1);
    this._emit("notification:new", item, replayed);
  }

  _advance(seq) {
    if (this.watermark === null || seq <= this.watermark) return;
    this._aboveWatermark.add(seq);
    while (this._aboveWatermark.has(this.watermark + 1)) {
      this.watermark += 1;
      this._aboveWatermark.delete(this.watermark);
    }
  }

  /** Page notifications.sync from the watermark until has_more is false, then refresh the count. */
  _catchUp() {
    const run = async () => {
      try {
        while (this.watermark !== null) {
          const page = await this.sync(this.watermark, SYNC_PAGE);
          const items = page.items ?? [];
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
        await this.fetchUnreadCount();
      } catch (err) {
        // The next reconnect syncs again from the same watermark.
        console.warn("herald: sync failed", err);
      }
    };
    this._syncing = (this._syncing ?? Promise.resolve()).then(run);
    return this._syncing;
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
    const ws = this._ws;
    this._ws = null;
    if (ws && ws.readyState <= 1) ws.close(1000, "client closed");
    this._failPending("client closed");
    for (const waiter of this._waiters) waiter.reject(this._closedError());
    this._waiters.clear();
    this._emit("closed", { code, reason });
  }
}
