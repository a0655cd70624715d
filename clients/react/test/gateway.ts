// A Herald gateway in the test process, behind a fake WebSocket: the real @herald/client talks to it.
// It keeps notifications and preferences like the server (docs/protocol.md §5, §6, §10) and can be told
// to fail a method (`failing`), to test rollbacks and error states.
import { HeraldClient } from "@herald/client";
import type { Notification, Preferences } from "@herald/client";

type Frame = { id?: number; method?: string; params?: Record<string, unknown> };

const CATALOG: Record<string, string> = {
  COURSE_NEW_CONTENT: "course",
  COURSE_UPDATE: "course",
  GRADE_RELEASED: "assessment",
  NEW_COMMENT: "social",
  SECURITY_ALERT: "system",
};

function defaults(): Preferences {
  const types: Preferences["types"] = {};
  for (const type of Object.keys(CATALOG)) types[type] = { in_app: true, email: type === "SECURITY_ALERT", push: true };
  return { channels: { in_app: true, email: true, push: true }, types, quiet_hours: null, updated_at: null };
}

export class FakeGateway {
  stored: Notification[] = [];
  preferences: Preferences = defaults();
  requests: { method: string; params: Record<string, unknown> }[] = [];
  /** method → JSON-RPC error it answers with. */
  failing = new Map<string, { code: number; message: string }>();
  /** method → a promise the reply waits for (to look at the optimistic state). */
  holds = new Map<string, Promise<void>>();
  sockets = new Set<FakeSocket>();
  WebSocket: typeof WebSocket;

  constructor() {
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const gateway = this;
    this.WebSocket = class extends FakeSocket {
      constructor(url: string) {
        super(url, gateway);
      }
    } as unknown as typeof WebSocket;
  }

  client(options: Record<string, unknown> = {}): HeraldClient {
    return new HeraldClient("ws://gateway.test/notifications", {
      getToken: () => `x.${btoa(JSON.stringify({ sub: "u1", exp: Date.now() / 1000 + 3600 }))}.y`,
      WebSocket: this.WebSocket,
      backoffBaseMs: 5,
      ...options,
    });
  }

  get unread(): number {
    return this.stored.filter((n) => !n.read_at && !n.archived_at).length;
  }

  /** Store a notification (newest last) and push it live unless `live` is false. */
  /** Hold every reply to `method` until the returned function is called. */
  hold(method: string): () => void {
    let release!: () => void;
    this.holds.set(method, new Promise<void>((resolve) => (release = resolve)));
    return () => {
      this.holds.delete(method);
      release();
    };
  }

  notify(fields: Partial<Notification> = {}, { live = true } = {}): Notification {
    const seq = this.stored.length + 1;
    const item: Notification = {
      id: `n${seq}`,
      seq,
      type: "COURSE_NEW_CONTENT",
      category: "course",
      title: `Notification ${seq}`,
      message: `Message ${seq}`,
      data: {},
      created_at: new Date(Date.UTC(2026, 0, 1, 0, seq)).toISOString(),
      read_at: null,
      seen_at: null,
      archived_at: null,
      ...fields,
    };
    this.stored.push(item);
    if (live) this.broadcast("notification:new", item);
    return item;
  }

  broadcast(method: string, params: unknown) {
    for (const socket of this.sockets) socket.push({ method, params });
  }

  async answer(socket: FakeSocket, frame: Frame) {
    const { id, method = "", params = {} } = frame;
    this.requests.push({ method, params });
    const hold = this.holds.get(method);
    if (hold) await hold;
    const failure = this.failing.get(method);
    if (failure) return socket.push({ id, error: failure });
    const result = this.result(socket, method, params);
    if (result === undefined) return socket.push({ id, error: { code: -32601, message: "Method not found" } });
    return socket.push({ id, result });
  }

  private result(socket: FakeSocket, method: string, params: Record<string, unknown>): unknown {
    const ids = (params.ids as string[] | undefined) ?? [];
    const picked = () => this.stored.filter((n) => ids.includes(n.id));
    const now = new Date().toISOString();
    switch (method) {
      case "auth":
        queueMicrotask(() =>
          socket.push({
            method: "connected",
            params: { user_id: "u1", connection_id: "c1", unread_count: this.unread, last_seq: this.stored.length },
          }),
        );
        return {};
      case "notifications.list": {
        let items = [...this.stored].reverse();
        items = items.filter((n) => (params.archived ? n.archived_at : !n.archived_at));
        if (params.unread_only) items = items.filter((n) => !n.read_at);
        if (typeof params.before === "number") items = items.filter((n) => (n.seq ?? 0) < (params.before as number));
        const limit = (params.limit as number) ?? 20;
        const page = items.slice(0, limit);
        const more = items.length > limit;
        return { items: page, next_cursor: more ? page.at(-1)?.seq : null, total: items.length, unread_count: this.unread };
      }
      case "notifications.sync":
        return { items: this.stored.filter((n) => (n.seq ?? 0) > (params.since as number)), has_more: false };
      case "notifications.unread_count":
        return { count: this.unread };
      case "notifications.mark_read":
        picked().forEach((n) => (n.read_at = now));
        this.broadcast("notification:read", { ids, unread_count: this.unread });
        return { updated: ids.length, unread_count: this.unread };
      case "notifications.mark_unread":
        picked().forEach((n) => (n.read_at = null));
        this.broadcast("notification:unread", { ids, unread_count: this.unread });
        return { updated: ids.length, unread_count: this.unread };
      case "notifications.mark_all_read":
        this.stored.forEach((n) => (n.read_at ??= now));
        this.broadcast("notification:read", { all: true, unread_count: 0 });
        return { updated: 1, unread_count: 0 };
      case "notifications.delete":
        this.stored = this.stored.filter((n) => !ids.includes(n.id));
        this.broadcast("notification:deleted", { ids, unread_count: this.unread });
        return { deleted: ids.length, unread_count: this.unread };
      case "notifications.archive":
        picked().forEach((n) => (n.archived_at = now));
        this.broadcast("notification:archived", { ids, unread_count: this.unread });
        return { updated: ids.length, unread_count: this.unread };
      case "notifications.unarchive":
        picked().forEach((n) => (n.archived_at = null));
        this.broadcast("notification:unarchived", { ids, unread_count: this.unread });
        return { updated: ids.length, unread_count: this.unread };
      case "notifications.act": {
        const item = this.stored.find((n) => n.id === params.id);
        if (item) Object.assign(item, { acted_at: now, action_id: params.action_id, read_at: item.read_at ?? now });
        this.broadcast("notification:acted", { id: params.id, action_id: params.action_id, acted_at: now, unread_count: this.unread });
        return { updated: 1, unread_count: this.unread };
      }
      case "preferences.get":
        return this.preferences;
      case "preferences.update": {
        const patch = params as Partial<Preferences>;
        const next = structuredClone(this.preferences);
        Object.assign(next.channels, patch.channels ?? {});
        for (const [type, channels] of Object.entries(patch.types ?? {})) Object.assign(next.types[type], channels);
        if ("quiet_hours" in patch) next.quiet_hours = patch.quiet_hours ?? null;
        next.updated_at = now;
        this.preferences = next;
        this.broadcast("preferences:updated", next);
        return next;
      }
      case "preferences.reset":
        this.preferences = { ...defaults(), updated_at: now };
        this.broadcast("preferences:updated", this.preferences);
        return this.preferences;
      case "ping":
        return "pong";
      default:
        return undefined;
    }
  }
}

class FakeSocket {
  readyState = 0;
  onopen: (() => void) | null = null;
  onmessage: ((event: { data: string }) => void) | null = null;
  onclose: ((event: { code: number; reason: string }) => void) | null = null;

  constructor(
    readonly url: string,
    private readonly gateway: FakeGateway,
  ) {
    setTimeout(() => {
      this.readyState = 1;
      gateway.sockets.add(this);
      this.onopen?.();
    }, 0);
  }

  send(text: string) {
    void this.gateway.answer(this, JSON.parse(text) as Frame);
  }

  push(frame: Record<string, unknown>) {
    setTimeout(() => {
      if (this.readyState === 1) this.onmessage?.({ data: JSON.stringify({ jsonrpc: "2.0", ...frame }) });
    }, 0);
  }

  close(code = 1000, reason = "") {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.gateway.sockets.delete(this);
    setTimeout(() => this.onclose?.({ code, reason }), 0);
  }
}
