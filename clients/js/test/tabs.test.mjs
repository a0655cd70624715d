// SharedHeraldClient (one socket per browser), gateway fail-over and the §9/§10 helpers, against an
// in-process fake gateway: `node --experimental-websocket --test clients/js/test/tabs.test.mjs`.
// Node's BroadcastChannel connects the "tabs" (clients in one process); Web Locks are a small in-process
// stand-in with the browser's semantics (one holder per name, FIFO queue, abort while queued).
import assert from "node:assert/strict";
import { test } from "node:test";

import { HeraldClient, HeraldRequestError, SharedHeraldClient, createHeraldClient } from "../herald.js";

const token = (sub) => `x.${Buffer.from(JSON.stringify({ sub, exp: Date.now() / 1000 + 3600 })).toString("base64url")}.y`;

async function waitUntil(predicate, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((later) => setTimeout(later, 10));
  }
}

/** A gateway in this process: notifications with seqs, the requests the client uses, open-socket count. */
class FakeGateway {
  constructor() {
    this.sockets = new Set();
    this.stored = [];
    this.requests = [];
    this.refused = new Set(); // URLs whose connections fail before `connected`
    this.holding = false; // while true, new sockets wait before opening
    this.held = [];
    this.connections = 0;
    this.seq = 0; // the user's last seq
    this.failingSyncs = 0; // the next this many notifications.sync answer 5003, as while the worker reconnects
    const gateway = this;
    this.WebSocket = class {
      constructor(url) {
        this.url = url;
        this.readyState = 0;
        this.open = () => {
          if (this.readyState === 3) return; // closed while connecting: a browser's socket never opens then
          if (gateway.refused.has(url)) return this._closed(1006, "refused");
          this.readyState = 1;
          gateway.sockets.add(this);
          this.onopen?.();
        };
        if (gateway.holding) gateway.held.push(this.open);
        else setTimeout(this.open, 1);
      }
      send(text) {
        const frame = JSON.parse(text);
        setTimeout(() => gateway._answer(this, frame), 1);
      }
      close(code = 1000, reason = "") {
        this._closed(code, reason);
      }
      _closed(code, reason) {
        if (this.readyState === 3) return;
        this.readyState = 3;
        gateway.sockets.delete(this);
        setTimeout(() => this.onclose?.({ code, reason }), 1);
      }
      _frame(frame) {
        if (this.readyState === 1) setTimeout(() => this.onmessage?.({ data: JSON.stringify({ jsonrpc: "2.0", ...frame }) }), 1);
      }
    };
  }

  release() {
    this.holding = false;
    for (const open of this.held.splice(0)) open();
  }

  /** The stored notifications the user still has (amendment 15: an expired one is gone from every read). */
  get live() {
    return this.stored.filter((n) => !n.expired);
  }

  get unread() {
    return this.live.filter((n) => !n.read_at).length;
  }

  get unseen() {
    return this.live.filter((n) => !n.seen_at).length;
  }

  /** Store a notification and push it live to every open socket. */
  notify(title, { live = true } = {}) {
    const item = { id: `n${this.stored.length + 1}`, seq: ++this.seq, title, read_at: null, seen_at: null, count: 1 };
    this.stored.push(item);
    if (live) for (const ws of this.sockets) ws._frame({ method: "notification:new", params: item });
    return item;
  }

  /** A new event collapses into the unread `item` (amendment 12): the next seq, count + 1; pushed live. */
  collapse(item, title) {
    Object.assign(item, { seq: ++this.seq, count: item.count + 1, title, seen_at: null });
    this.stored.push(...this.stored.splice(this.stored.indexOf(item), 1)); // sync pages in seq order
    for (const ws of this.sockets) ws._frame({ method: "notification:new", params: { ...item } });
    return item;
  }

  /** Store a broadcast's copy (the user's own seq) and push the live frame, which has `seq: null`. */
  broadcast(title, { live = true } = {}) {
    const item = { id: `b${this.stored.length + 1}`, seq: ++this.seq, title, read_at: null, seen_at: null, count: 1 };
    this.stored.push(item);
    if (live) this.sendAll("notification:new", { ...item, seq: null });
    return item;
  }

  /** Send a notification frame (e.g. sync:required) to every open socket. */
  sendAll(method, params = {}) {
    for (const ws of this.sockets) ws._frame({ method, params });
  }

  /** The `since` of every notifications.sync request so far. */
  get syncCalls() {
    return this.requests.filter((r) => r.method === "notifications.sync").map((r) => r.params.since);
  }

  _answer(ws, { id, method, params }) {
    this.requests.push({ method, params });
    const reply = (result) => ws._frame({ id, result });
    const fail = (code, message) => ws._frame({ id, error: { code, message } });
    if (method === "auth") {
      this.connections += 1;
      reply({});
      const sub = JSON.parse(Buffer.from(params.token.split(".")[1], "base64url")).sub;
      ws._frame({
        method: "connected",
        params: { user_id: sub, connection_id: `c${this.connections}`, unread_count: this.unread, unseen_count: this.unseen, last_seq: this.seq },
      });
    } else if (method === "ping") reply("pong");
    else if (method === "notifications.sync") {
      if (this.failingSyncs > 0) {
        this.failingSyncs -= 1;
        return fail(5003, "service unavailable");
      }
      reply({ items: this.live.filter((n) => n.seq > params.since), has_more: false });
    } else if (method === "notifications.list") {
      const items = [...this.live].reverse();
      reply({ items, next_cursor: null, total: items.length, unread_count: this.unread, unseen_count: this.unseen });
    } else if (method === "notifications.unread_count") reply({ count: this.unread, unseen_count: this.unseen });
    else if (method === "notifications.mark_read") {
      for (const n of this.stored) if (params.ids.includes(n.id)) n.read_at = "2026-01-01T00:00:00Z";
      reply({ updated: params.ids.length, unread_count: this.unread });
      for (const other of this.sockets) other._frame({ method: "notification:read", params: { ids: params.ids, unread_count: this.unread } });
    } else if (method === "notifications.mark_seen") {
      for (const n of this.stored) if (params.all || params.ids.includes(n.id)) n.seen_at ??= "2026-01-01T00:00:00Z";
      reply({ updated: 1, unseen_count: this.unseen });
    } else if (["notifications.archive", "notifications.unarchive", "notifications.act"].includes(method)) {
      reply({ updated: 1, unread_count: this.unread });
    } else if (method === "push.vapid_key") reply({ public_key: "BPk0" });
    else if (method === "push.subscribe") reply({ id: "s1" });
    else if (method === "push.unsubscribe") reply({ removed: 1 });
    else fail(-32601, "Method not found");
  }
}

/** navigator.locks, reduced to what the client uses. */
class FakeLocks {
  constructor() {
    this.queues = new Map();
  }
  request(name, options, callback) {
    const queue = this.queues.get(name) ?? [];
    this.queues.set(name, queue);
    return new Promise((resolve, reject) => {
      const entry = { callback, resolve, reject };
      options.signal?.addEventListener("abort", () => {
        const at = queue.indexOf(entry);
        if (at > 0) {
          queue.splice(at, 1);
          reject(new Error("AbortError"));
        }
      });
      queue.push(entry);
      if (queue.length === 1) this._grant(name);
    });
  }
  async _grant(name) {
    const queue = this.queues.get(name);
    const entry = queue[0];
    if (!entry) return;
    try {
      entry.resolve(await entry.callback({ name }));
    } catch (err) {
      entry.reject(err);
    }
    queue.shift();
    this._grant(name);
  }
}

function tabs(gateway, count, options = {}) {
  const opened = [];
  const key = `k${Math.random()}`;
  for (let i = 0; i < count; i++) {
    const client = new SharedHeraldClient("ws://gw/notifications", {
      getToken: () => token("u1"),
      WebSocket: gateway.WebSocket,
      backoffBaseMs: 10,
      backoffMaxMs: 50,
      shareKey: key,
      heartbeatMs: 250,
      ...options,
    });
    const titles = [];
    client.on("notification:new", (n) => titles.push(n.title));
    opened.push({ client, titles });
  }
  return opened;
}

const leaderOf = (opened) => opened.filter((tab) => tab.client.isLeader);
/** Whether the tabs' election is over: one leader, and no tab still electing. */
const elected = (opened) => leaderOf(opened).length === 1 && opened.every((tab) => tab.client.role !== "electing");

for (const mode of ["web locks", "heartbeats"]) {
  test(`three tabs share one socket, and the leader's close hands it over with nothing missed (${mode})`, async () => {
    const gateway = new FakeGateway();
    const locks = mode === "web locks" ? new FakeLocks() : null;
    const opened = tabs(gateway, 3, { locks });
    try {
      await Promise.all(opened.map((tab) => tab.client.connect()));
      await waitUntil(() => elected(opened), 10000, "one leader");
      assert.equal(gateway.sockets.size, 1);
      assert.equal(opened.filter((tab) => tab.client.role === "follower").length, 2);

      gateway.notify("first");
      await waitUntil(() => opened.every((tab) => tab.titles.length === 1), 10000, "every tab to get it");
      assert.ok(opened.every((tab) => tab.client.unreadCount === 1));

      // A follower's request goes through the leader's socket; the change reaches every tab.
      const follower = opened.find((tab) => !tab.client.isLeader);
      assert.equal(await follower.client.ping(), "pong");
      assert.equal((await follower.client.markRead(["n1"])).unread_count, 0);
      await waitUntil(() => opened.every((tab) => tab.client.unreadCount === 0), 10000, "the count everywhere");
      await assert.rejects(follower.client.request("nope"), (err) => err instanceof HeraldRequestError && err.code === -32601);

      // The leader tab closes; notifications published while no tab holds a socket are not missed.
      gateway.holding = true;
      const [leader] = leaderOf(opened);
      leader.client.close();
      await waitUntil(() => gateway.sockets.size === 0, 10000, "the old socket to close");
      gateway.notify("while handing over", { live: false });
      gateway.notify("also missed", { live: false });
      gateway.release();
      const rest = opened.filter((tab) => tab !== leader);
      await waitUntil(() => rest.every((tab) => tab.titles.length === 3), 15000, "the missed ones in the other tabs");
      assert.equal(leaderOf(rest).length, 1);
      assert.equal(gateway.sockets.size, 1);
      for (const tab of rest) assert.deepEqual(tab.titles, ["first", "while handing over", "also missed"]);
      await waitUntil(() => rest.every((tab) => tab.client.unreadCount === 2), 10000, "counts after the sync");

      gateway.notify("live again");
      await waitUntil(() => rest.every((tab) => tab.titles.at(-1) === "live again"), 10000, "live after the handover");
      assert.ok(rest.every((tab) => tab.titles.length === 4), "nothing twice");
    } finally {
      opened.forEach((tab) => tab.client.close());
    }
  });
}

test("a follower's request during the handover waits for the new leader", async () => {
  const gateway = new FakeGateway();
  const opened = tabs(gateway, 2, { locks: new FakeLocks() });
  try {
    await Promise.all(opened.map((tab) => tab.client.connect()));
    await waitUntil(() => elected(opened), 10000, "a leader");
    const [leader] = leaderOf(opened);
    const follower = opened.find((tab) => tab !== leader);
    leader.client.close();
    // Issued after the handover started: it waits for the new leader rather than failing.
    await waitUntil(() => follower.client.state !== "open" || follower.client.isLeader, 10000, "the follower to notice");
    assert.equal(await follower.client.ping(), "pong");
    assert.ok(follower.client.isLeader);
  } finally {
    opened.forEach((tab) => tab.client.close());
  }
});

/** BroadcastChannel between the "tabs" of one test, able to hold back one tab's messages (a slow delivery). */
function channelBus() {
  const members = new Set();
  const held = new Map(); // tab id → messages not delivered yet
  class Channel {
    constructor(name) {
      this.name = name;
      this.onmessage = null;
      members.add(this);
    }
    postMessage(data) {
      const copy = structuredClone(data);
      if (held.has(copy.from)) held.get(copy.from).push([this, copy]);
      else setTimeout(() => this._deliver(copy), 1);
    }
    _deliver(data) {
      for (const other of members) if (other !== this && other.name === this.name) other.onmessage?.({ data });
    }
    close() {
      members.delete(this);
    }
  }
  return {
    Channel,
    hold: (tabId) => held.set(tabId, []),
    release(tabId) {
      const messages = held.get(tabId) ?? [];
      held.delete(tabId);
      for (const [channel, data] of messages) channel._deliver(data);
    },
  };
}

test("a late message of the leader that left does not take a follower away from the new leader", async () => {
  // In a browser the Web Lock can pass to the next tab before the other tabs have read the old
  // leader's last messages: a follower then hears the new leader first and the old one's `bye` after.
  const gateway = new FakeGateway();
  const bus = channelBus();
  const opened = tabs(gateway, 3, { locks: new FakeLocks(), BroadcastChannel: bus.Channel });
  try {
    await Promise.all(opened.map((tab) => tab.client.connect()));
    await waitUntil(() => elected(opened), 10000, "one leader");
    const [old] = leaderOf(opened);
    bus.hold(old.client.tabId);
    gateway.notify("last one of the old leader"); // relayed by the old leader: held back
    await waitUntil(() => old.titles.length === 1, 10000, "the old leader to get it");
    old.client.close(); // its `bye` is held back too; the lock passes at once
    const rest = opened.filter((tab) => tab !== old);
    await waitUntil(() => leaderOf(rest).length === 1 && rest.every((t) => t.client.state === "open"), 10000, "the new leader");
    const [next] = leaderOf(rest);
    const follower = rest.find((tab) => tab !== next);
    await waitUntil(() => follower.client.leaderId === next.client.tabId, 10000, "the follower to follow it");
    await waitUntil(() => follower.titles.length === 1, 10000, "the missed notification (the new leader syncs it)");
    bus.release(old.client.tabId); // now the follower reads the old leader's event and `bye` (delivered at once)
    assert.equal(follower.client.leaderId, next.client.tabId);
    assert.equal(follower.client.state, "open");
    assert.equal(await follower.client.ping(), "pong");
    gateway.notify("live");
    await waitUntil(() => follower.titles.at(-1) === "live", 10000, "live through the new leader");
    assert.deepEqual(follower.titles, ["last one of the old leader", "live"]);
  } finally {
    opened.forEach((tab) => tab.client.close());
  }
});

test("tabs of different users never share", async () => {
  const gateway = new FakeGateway();
  const locks = new FakeLocks();
  const make = (user) =>
    new SharedHeraldClient("ws://gw/notifications", { getToken: () => token(user), WebSocket: gateway.WebSocket, locks });
  const alice = make("alice");
  const bob = make("bob");
  try {
    await Promise.all([alice.connect(), bob.connect()]);
    assert.equal(gateway.sockets.size, 2);
    assert.ok(alice.isLeader && bob.isLeader);
    assert.equal(alice.userId, "alice");
    assert.equal(bob.userId, "bob");
  } finally {
    alice.close();
    bob.close();
  }
});

test("without BroadcastChannel each tab gets its own client", () => {
  const plain = createHeraldClient("ws://gw/notifications", { getToken: () => "t", BroadcastChannel: null, shareTabs: undefined });
  assert.ok(plain instanceof HeraldClient);
  const saved = globalThis.BroadcastChannel;
  try {
    globalThis.BroadcastChannel = undefined;
    assert.ok(createHeraldClient("ws://gw", { getToken: () => "t" }) instanceof HeraldClient);
  } finally {
    globalThis.BroadcastChannel = saved;
  }
  assert.ok(createHeraldClient("ws://gw", { getToken: () => "t" }) instanceof SharedHeraldClient);
  assert.ok(createHeraldClient("ws://gw", { getToken: () => "t", shareTabs: false }) instanceof HeraldClient);
});

test("several gateway URLs: a refused one is skipped, and 1001 moves on", async () => {
  const gateway = new FakeGateway();
  gateway.refused.add("ws://a/notifications");
  const client = new HeraldClient(["ws://a/notifications", "ws://b/notifications"], {
    getToken: () => token("u1"),
    WebSocket: gateway.WebSocket,
    backoffBaseMs: 5,
  });
  const states = [];
  client.on("disconnected", ({ code }) => states.push(code));
  try {
    await client.connect();
    assert.equal(client.url, "ws://b/notifications");
    assert.deepEqual(states, [1006]);
    gateway.refused.clear();
    for (const ws of gateway.sockets) ws.close(1001, "going away");
    await waitUntil(() => client.state === "open" && client.url === "ws://a/notifications", 10000, "the fail-over back to a");
  } finally {
    client.close();
  }
});

test("seen, archive and actions: the methods and the unseen count", async () => {
  const gateway = new FakeGateway();
  const client = new HeraldClient("ws://gw/notifications", { getToken: () => token("u1"), WebSocket: gateway.WebSocket });
  const unseen = [];
  client.on("unseen", ({ count }) => unseen.push(count));
  try {
    await client.connect();
    assert.equal(client.unseenCount, 0);
    gateway.notify("one");
    await waitUntil(() => client.unseenCount === 1, 10000, "unseen 1");
    await client.markSeen("all");
    assert.equal(client.unseenCount, 0);
    await client.markSeen(["n1"]);
    await client.archive(["n1"]);
    await client.unarchive(["n1"]);
    await client.act("n1", "accept");
    await client.list({ archived: true }).catch(() => {});
    const sent = gateway.requests.filter((r) => r.method.startsWith("notifications.")).map((r) => [r.method, r.params]);
    assert.deepEqual(sent, [
      ["notifications.mark_seen", { all: true }],
      ["notifications.mark_seen", { ids: ["n1"] }],
      ["notifications.archive", { ids: ["n1"] }],
      ["notifications.unarchive", { ids: ["n1"] }],
      ["notifications.act", { id: "n1", action_id: "accept" }],
      ["notifications.list", { archived: true }],
    ]);
    assert.deepEqual(unseen, [0, 1, 0]);
  } finally {
    client.close();
  }
});

test("push.subscribe subscribes the browser with the server's VAPID key and registers it", async () => {
  const gateway = new FakeGateway();
  const client = new HeraldClient("ws://gw/notifications", { getToken: () => token("u1"), WebSocket: gateway.WebSocket });
  let current = null;
  const subscription = {
    endpoint: "https://push.example/s/1",
    toJSON: () => ({ endpoint: "https://push.example/s/1", expirationTime: null, keys: { p256dh: "p", auth: "a" } }),
    unsubscribe: async () => {
      current = null;
      return true;
    },
  };
  const asked = [];
  const registration = {
    pushManager: {
      getSubscription: async () => current,
      subscribe: async (options) => {
        asked.push(options);
        current = subscription;
        return subscription;
      },
    },
  };
  try {
    await client.connect();
    const { id } = await client.push.subscribe(registration, { device: "laptop" });
    assert.equal(id, "s1");
    assert.equal(asked[0].userVisibleOnly, true);
    assert.deepEqual([...asked[0].applicationServerKey], [4, 249, 52]);
    const registered = gateway.requests.find((r) => r.method === "push.subscribe").params;
    assert.deepEqual(registered, { endpoint: "https://push.example/s/1", keys: { p256dh: "p", auth: "a" }, device: "laptop" });
    assert.deepEqual(await client.push.unsubscribe(registration), { removed: 1 });
    assert.equal(current, null);
    assert.deepEqual(gateway.requests.at(-1), { method: "push.unsubscribe", params: { endpoint: "https://push.example/s/1" } });
  } finally {
    client.close();
  }
});

// ------------------------------------------------------------------ broadcasts, catch-up retries

/** A HeraldClient on `gateway` with a record of the notifications it emitted. */
function single(gateway, options = {}) {
  const client = new HeraldClient("ws://gw/notifications", {
    getToken: () => token("u1"),
    WebSocket: gateway.WebSocket,
    backoffBaseMs: 10,
    backoffMaxMs: 50,
    ...options,
  });
  const titles = [];
  client.on("notification:new", (n) => titles.push(n.title));
  return { client, titles };
}

const countFetches = (gateway) => gateway.requests.filter((r) => r.method === "notifications.unread_count").length;

test("a broadcast's live frame (seq null) and its stored copy in a later sync are one notification", async () => {
  const gateway = new FakeGateway();
  const { client, titles } = single(gateway);
  try {
    await client.connect();
    gateway.broadcast("all hands");
    await waitUntil(() => titles.length === 1, 10000, "the live broadcast frame");
    await waitUntil(() => client.unreadCount === 1, 10000, "the count the frame fetched");
    gateway.sendAll("sync:required");
    await waitUntil(() => gateway.syncCalls.length === 1, 10000, "the sync");
    await client._syncing;
    assert.deepEqual(titles, ["all hands"], "the stored copy (same id, a real seq) is a repeat, not a new version");
    assert.equal(countFetches(gateway), 2, "the frame's count fetch and the one that ends the catch-up, none for the copy");
    assert.equal(client.unreadCount, 1);
    assert.equal(client.watermark, 1);
  } finally {
    client.close();
  }
});

// ------------------------------------------------------------- counts the client cannot derive

/** Wait until the gateway has answered a count fetch after the first `fetches`: a ping sent after it is
 * answered after it (the fake answers in order), so once the ping's reply is in, so is the count. */
async function counted(gateway, client, fetches) {
  await waitUntil(() => countFetches(gateway) > fetches, 10000, "a count fetch");
  await client.ping();
}

test("a collapse into an unread item stored before the client connected leaves the counts as they are", async () => {
  const gateway = new FakeGateway();
  const item = gateway.notify("2 comments", { live: false }); // history: the client never delivers it
  const { client, titles } = single(gateway);
  try {
    await client.connect();
    assert.equal(client.unreadCount, 1);
    const fetches = countFetches(gateway);
    gateway.collapse(item, "3 comments"); // same id, the next seq, count 3: still one unread item
    await waitUntil(() => titles.length === 1, 10000, "the collapse frame");
    assert.equal(client.unreadCount, 1, "not counted as a new notification");
    assert.equal(client.unseenCount, 1);
    await counted(gateway, client, fetches);
    assert.equal(client.unreadCount, gateway.unread);
    assert.equal(client.unreadCount, 1);
  } finally {
    client.close();
  }
});

test("a collapse after a tab hand-over (the new leader never delivered the item) leaves the counts as they are", async () => {
  const gateway = new FakeGateway();
  const opened = tabs(gateway, 2, { locks: new FakeLocks() });
  try {
    await Promise.all(opened.map((tab) => tab.client.connect()));
    await waitUntil(() => elected(opened), 10000, "one leader");
    const item = gateway.notify("2 comments");
    await waitUntil(() => opened.every((tab) => tab.client.unreadCount === 1 && tab.titles.length === 1), 10000, "the first version");
    const [leader] = leaderOf(opened);
    const tab = opened.find((other) => other !== leader);
    leader.client.close(); // the other tab takes over with a new socket, from the watermark
    await waitUntil(() => tab.client.isLeader && tab.client.state === "open" && gateway.connections === 2, 10000, "the hand-over");
    const fetches = countFetches(gateway);
    gateway.collapse(item, "3 comments");
    await waitUntil(() => tab.titles.length === 2, 10000, "the collapse frame");
    assert.equal(tab.client.unreadCount, 1, "not counted as a new notification");
    await counted(gateway, tab.client, fetches);
    assert.equal(tab.client.unreadCount, gateway.unread);
  } finally {
    opened.forEach((tab) => tab.client.close());
  }
});

test("a broadcast's live frame whose stored copy is in connected's count already is not counted again", async () => {
  const gateway = new FakeGateway();
  // Amendment 36: the chunk with this user's copy is committed, the frame goes out after the last chunk.
  const copy = gateway.broadcast("maintenance", { live: false });
  const { client, titles } = single(gateway);
  try {
    await client.connect();
    assert.equal(client.unreadCount, 1);
    const fetches = countFetches(gateway);
    gateway.sendAll("notification:new", { ...copy, seq: null });
    await waitUntil(() => titles.length === 1, 10000, "the broadcast frame");
    assert.equal(client.unreadCount, 1, "the frame fetches the counts rather than adding one");
    await counted(gateway, client, fetches);
    assert.equal(client.unreadCount, gateway.unread);
  } finally {
    client.close();
  }
});

for (const asking of ["one client", "a follower tab", "the leader tab"]) {
  test(`the counts of a list() result stay once the next notification comes (${asking})`, async () => {
    const gateway = new FakeGateway();
    const opened = asking === "one client" ? [single(gateway)] : tabs(gateway, 2, { locks: new FakeLocks() });
    try {
      await Promise.all(opened.map((tab) => tab.client.connect()));
      if (opened.length > 1) await waitUntil(() => elected(opened), 10000, "one leader");
      gateway.notify("a");
      await waitUntil(() => opened.every((tab) => tab.client.unreadCount === 1), 10000, "the count of a");
      gateway.stored[0].expired = true; // amendment 15: it leaves the counts without a frame
      const followers = opened.filter((other) => !other.client.isLeader);
      const tab = asking === "a follower tab" ? followers[0] : (leaderOf(opened)[0] ?? opened[0]);
      const page = await tab.client.list();
      assert.equal(page.unread_count, 0);
      assert.equal(tab.client.unreadCount, 0);
      await waitUntil(() => opened.every((other) => other.client.unreadCount === 0), 10000, "every tab to take the result's count");
      gateway.notify("b");
      await waitUntil(() => opened.every((other) => other.titles.length === 2), 10000, "b in every tab");
      for (const other of opened) assert.equal(other.client.unreadCount, gateway.unread, "the client's count is the server's");
      assert.equal(gateway.unread, 1);
    } finally {
      opened.forEach((other) => other.client.close());
    }
  });
}

test("tabs show a broadcast once when the leader's sync returns its stored copy", async () => {
  const gateway = new FakeGateway();
  const opened = tabs(gateway, 2, { locks: new FakeLocks() });
  try {
    await Promise.all(opened.map((tab) => tab.client.connect()));
    await waitUntil(() => elected(opened), 10000, "one leader");
    gateway.broadcast("all hands");
    await waitUntil(() => opened.every((tab) => tab.titles.length === 1), 10000, "every tab to get it");
    gateway.sendAll("sync:required");
    await waitUntil(() => gateway.syncCalls.length === 1 && countFetches(gateway) >= 1, 10000, "the leader's catch-up");
    // A live notification after the catch-up: the leader relays in order, so once every tab has it,
    // whatever the catch-up relayed before it has arrived too.
    gateway.notify("after the catch-up");
    await waitUntil(() => opened.every((tab) => tab.titles.length >= 2), 10000, "the marker in every tab");
    for (const tab of opened) assert.deepEqual(tab.titles, ["all hands", "after the catch-up"]);
  } finally {
    opened.forEach((tab) => tab.client.close());
  }
});

test("a catch-up that fails on sync:required (5003) is retried with backoff until it succeeds", async () => {
  const gateway = new FakeGateway();
  const { client, titles } = single(gateway);
  try {
    await client.connect();
    gateway.notify("lost 1", { live: false });
    gateway.notify("lost 2", { live: false });
    gateway.failingSyncs = 2;
    gateway.sendAll("sync:required");
    await waitUntil(() => titles.length === 2, 10000, "the sync that finally succeeded");
    assert.deepEqual(gateway.syncCalls, [0, 0, 0]);
    assert.deepEqual(titles, ["lost 1", "lost 2"]);
    assert.equal(client.watermark, 2);
    await waitUntil(() => client.unreadCount === 2, 10000, "the count after the catch-up");
  } finally {
    client.close();
  }
});

test("a catch-up that fails after a reconnect is retried until it succeeds", async () => {
  const gateway = new FakeGateway();
  const { client, titles } = single(gateway);
  try {
    await client.connect();
    const first = client.connectionId;
    for (const ws of gateway.sockets) ws.close(1006, "network lost");
    gateway.notify("missed 1", { live: false });
    gateway.notify("missed 2", { live: false });
    gateway.failingSyncs = 3;
    await waitUntil(() => titles.length === 2, 10000, "the missed notifications");
    assert.notEqual(client.connectionId, first);
    assert.deepEqual(gateway.syncCalls, [0, 0, 0, 0]);
    assert.equal(client.watermark, 2);
  } finally {
    client.close();
  }
});

test("catch-up retries stop when the client closes", async () => {
  const gateway = new FakeGateway();
  const { client } = single(gateway);
  try {
    await client.connect();
    gateway.notify("lost", { live: false });
    gateway.failingSyncs = Infinity;
    gateway.sendAll("sync:required");
    await waitUntil(() => gateway.syncCalls.length >= 3, 10000, "a few retries");
  } finally {
    client.close();
  }
  await client._syncing; // the retry loop ends (it does not wait out its backoff)
  assert.equal(client._syncRetry, null, "no retry timer is left");
  // Once the gateway has seen the socket close, every request sent on it has been recorded; a closed
  // client with no retry timer opens no other socket, so nothing can add a sync.
  await waitUntil(() => gateway.sockets.size === 0, 10000, "the socket closed");
  const calls = gateway.syncCalls.length;
  const connections = gateway.connections;
  await client._syncing;
  assert.equal(client.state, "closed");
  assert.equal(gateway.connections, connections, "no reconnect after close()");
  assert.equal(gateway.syncCalls.length, calls, "no sync after close()");
});

test("a waiting catch-up retry gives way to a newer catch-up (sync:required, a new session)", async () => {
  const gateway = new FakeGateway();
  const random = Math.random;
  Math.random = () => 1; // every backoff is its cap: a retry would wait 30 s
  const { client, titles } = single(gateway, { backoffBaseMs: 30000, backoffMaxMs: 30000 });
  try {
    await client.connect();
    gateway.notify("one", { live: false });
    gateway.failingSyncs = 1;
    gateway.sendAll("sync:required");
    await waitUntil(() => gateway.syncCalls.length === 1, 10000, "the failed sync");
    await waitUntil(() => client._syncRetry !== null, 10000, "its retry waiting");
    gateway.sendAll("sync:required"); // runs at once rather than after the waiting retry
    await waitUntil(() => titles.length === 1, 5000, "the newer catch-up");
    await client._syncing;
    assert.deepEqual(gateway.syncCalls, [0, 0]);

    gateway.notify("two", { live: false });
    gateway.failingSyncs = 1;
    gateway.sendAll("sync:required");
    await waitUntil(() => gateway.syncCalls.length === 3, 10000, "the second failed sync");
    await waitUntil(() => client._syncRetry !== null, 10000, "its retry waiting");
    for (const ws of gateway.sockets) ws.close(1001, "going away"); // reconnects at once
    await waitUntil(() => titles.length === 2, 5000, "the new session's catch-up");
    await client._syncing;
    assert.deepEqual(gateway.syncCalls, [0, 0, 1, 1]);
    assert.deepEqual(titles, ["one", "two"]);
  } finally {
    Math.random = random;
    client.close();
  }
});

test("a shared client resumes from the watermark it was given: the leader syncs what came after it", async () => {
  const gateway = new FakeGateway();
  for (const title of ["seen before", "missed 2", "missed 3"]) gateway.notify(title, { live: false });
  const [tab] = tabs(gateway, 1, { locks: new FakeLocks(), watermark: 1 });
  try {
    await tab.client.connect();
    await waitUntil(() => tab.titles.length === 2, 10000, "the sync from the given watermark");
    assert.deepEqual(tab.titles, ["missed 2", "missed 3"]);
    assert.deepEqual(gateway.syncCalls, [1]);
  } finally {
    tab.client.close();
  }
});
