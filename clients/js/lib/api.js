// What both browser clients share: the errors, small helpers and HeraldApi (events, counts, the typed
// request helpers). See herald.js for the semantics.
import { CountAnchor } from "./counts.js";

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

/** A JWT's claims, read without verification (for `exp` and `sub`); null when unreadable. */
export function decodeClaims(token) {
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

/** The gateway URLs given (one or several) as a non-empty list; throws a TypeError when there is none. */
export function urlList(urls) {
  const list = (Array.isArray(urls) ? urls : [urls]).filter((url) => typeof url === "string" && url);
  if (!list.length) throw new TypeError("at least one gateway URL is required");
  return list;
}

/** The options both clients default (docs/clients.md). */
export const DEFAULTS = {
  requestTimeoutMs: 10000,
  backoffBaseMs: 500,
  backoffMaxMs: 30000,
  refreshMarginMs: 60000,
  openTimeoutMs: 15000,
};

/** The methods whose results carry `unread_count` and `unseen_count` (protocol amendment 10). */
const COUNTED = new Set([
  "notifications.list",
  "notifications.mark_read",
  "notifications.mark_unread",
  "notifications.mark_all_read",
  "notifications.mark_seen",
  "notifications.delete",
  "notifications.archive",
  "notifications.unarchive",
  "notifications.act",
]);

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
    this._counts = new CountAnchor(); // orders counts against live frames by their last_seq (amendment 51)
    this.watermark = null;
    this.closeCode = null;
    this.closeReason = "";
    this._listeners = new Map();
    this._timers = new Set(); // what _later() scheduled; the subclasses' _stop() clears them
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

  /** Take counts the server read with `result.last_seq` (amendment 51; `unread` is the unread count, the
   * `count` of notifications.unread_count): dropped when read before the counts shown (counts.js). */
  _takeCounts(result, unread = result?.unread_count) {
    if (!result || typeof result !== "object") return;
    const taken = this._counts.take(unread, result.unseen_count, result.last_seq);
    if (taken === null) return;
    this._setUnread(taken[0]);
    this._setUnseen(taken[1]);
  }

  // -------------------------------------------------------------------------------------------- helpers

  /** Take the counts a result of `method` carries, as the helpers below do (the leader of shared tabs does
   * it for the requests it answers); returns the result. notifications.unread_count: `count`, `unseen_count`
   * and `last_seq` (it anchors a missing watermark: amendment 42); list and the changes: `unread_count` and
   * `unseen_count` (amendment 10). */
  _took(method, result) {
    if (!result || typeof result !== "object") return result;
    if (method === "notifications.unread_count") {
      this._takeCounts(result, result.count);
      if (typeof result.last_seq === "number") this._anchor(result.last_seq);
    } else if (COUNTED.has(method)) {
      this._takeCounts(result);
    }
    return result;
  }

  /** notifications.list: {items (newest first), next_cursor, total, unread_count}. */
  async list(params = {}) {
    return this._took("notifications.list", await this.request("notifications.list", params));
  }

  /** notifications.sync, one page, no side effects: {items (seq ascending), has_more}. */
  sync(since, limit) {
    return this.request("notifications.sync", limit === undefined ? { since } : { since, limit });
  }

  /** notifications.unread_count → the unread count (also updates unreadCount and unseenCount, and anchors
   * a missing watermark at the reply's last_seq: amendment 42). */
  async fetchUnreadCount() {
    const result = await this.request("notifications.unread_count");
    return this._took("notifications.unread_count", result).count;
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
    return this._took(method, await this.request(method, params));
  }

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

  /** Run `fn` after `ms`, unless the client stops first (`_stop` clears `_timers`). */
  _later(fn, ms) {
    const timer = setTimeout(() => {
      this._timers.delete(timer);
      fn();
    }, ms);
    this._timers.add(timer);
  }

  /** The error of a request that meets a closed client. */
  _closedError() {
    return new HeraldConnectionError(`client closed (${this.closeCode ?? "-"} ${this.closeReason})`, "closed");
  }

  /** The ms left before `deadline`; throws the timeout error when none is (never send a late request). */
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
