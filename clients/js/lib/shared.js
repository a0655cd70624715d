// SharedHeraldClient: one HeraldClient per browser, shared by its tabs over BroadcastChannel (a leader
// elected with Web Locks or heartbeats holds the socket). See herald.js.

import { DEFAULTS, HeraldApi, HeraldConnectionError, HeraldRequestError, decodeClaims, urlList } from "./api.js";
import { HeraldClient } from "./client.js";
import { takeVersion } from "./tracking.js";

const SNAPSHOT = ["state", "userId", "connectionId", "unreadCount", "unseenCount", "watermark", "closeCode", "closeReason"];
// Events that only restate the snapshot: followers derive them from it, so they are not relayed twice.
const DERIVED = new Set(["state", "unread", "unseen"]);

function randomId() {
  return globalThis.crypto?.randomUUID?.() ?? `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

/**
 * One HeraldClient per browser, shared by its tabs over BroadcastChannel (see herald.js).
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
    // Resume from the caller's watermark until a leader's snapshot brings a newer one.
    if (typeof options.watermark === "number") this.watermark = options.watermark;
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
      if (this.role === "leader" && this._inner) return this._ask(this._inner, method, params, left);
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

  /** The leader's client answers a request of a tab (this one or another) and takes the counts of its result,
   * as the helpers do for the tab that asked: the snapshots it relays carry them from then on (else the next
   * event would bring back the counts from before, e.g. an expired item's: amendment 15). */
  async _ask(inner, method, params, timeoutMs) {
    return inner._took(method, await inner.request(method, params, { timeoutMs }));
  }

  async _serve({ id, from, method, params, timeoutMs }) {
    const inner = this._inner;
    try {
      const result = await this._ask(inner, method, params, timeoutMs);
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
