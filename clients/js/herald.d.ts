// Types for clients/js/herald.js (Herald WebSocket protocol, PROTOCOL §5).

export type Channel = "in_app" | "email" | "push";

export interface Notification {
  id: string;
  /** Per-user sequence number; null on the live frame of a broadcast. */
  seq: number | null;
  type: string;
  category: string;
  title: string;
  message: string;
  data: Record<string, unknown>;
  /** RFC 3339. */
  created_at: string;
  read_at: string | null;
}

export interface Preferences {
  channels: Record<Channel, boolean>;
  types: Record<string, Record<Channel, boolean>>;
  quiet_hours: { start: string; end: string; timezone: string } | null;
  updated_at: string | null;
}

export type PreferencesPatch = {
  channels?: Partial<Record<Channel, boolean>>;
  types?: Record<string, Partial<Record<Channel, boolean>>>;
  quiet_hours?: { start: string; end: string; timezone: string } | null;
};

export interface ListParams {
  limit?: number;
  before?: number;
  unread_only?: boolean;
  types?: string[];
  categories?: string[];
}

export interface ListResult {
  items: Notification[];
  next_cursor: number | null;
  total: number;
  unread_count: number;
}

export interface SyncResult {
  items: Notification[];
  has_more: boolean;
}

export type ClientState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

export interface ConnectedParams {
  user_id: string;
  connection_id: string;
  unread_count?: number;
  last_seq?: number;
}

export interface IdsChange {
  ids?: string[];
  all?: boolean;
  unread_count: number;
}

export interface EventMap {
  connected: ConnectedParams;
  "notification:new": Notification;
  "notification:read": IdsChange;
  "notification:unread": IdsChange;
  "notification:deleted": IdsChange;
  "preferences:updated": Preferences;
  "sync:required": Record<string, never>;
  unread: { count: number };
  state: { state: ClientState };
  disconnected: { code: number; reason: string; retryIn: number };
  closed: { code: number | null; reason: string };
  "*": unknown;
}

export interface EventMeta {
  method: string;
  /** True for notifications recovered by notifications.sync after a reconnect. */
  replayed: boolean;
}

export interface ClientOptions {
  /** Returns a JWT; called on every (re)connect and before the current token expires. */
  getToken: () => string | Promise<string>;
  requestTimeoutMs?: number;
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  refreshMarginMs?: number;
  openTimeoutMs?: number;
  WebSocket?: typeof WebSocket;
}

export class HeraldRequestError extends Error {
  readonly code: number;
  readonly data: unknown;
  readonly serverMessage: string;
}

export class HeraldConnectionError extends Error {
  readonly kind: "timeout" | "disconnected" | "closed";
}

export function tokenExpiry(token: string): number | null;
export function backoffDelay(attempt: number, baseMs: number, capMs: number): number;

export class HeraldClient {
  constructor(url: string, options: ClientOptions);
  readonly url: string;
  readonly state: ClientState;
  readonly userId: string | null;
  readonly connectionId: string | null;
  /** Kept in step with connected, notification:* frames and request results; null until known. */
  readonly unreadCount: number | null;
  /** Highest seq below which nothing can be missing; sync resumes from here. */
  readonly watermark: number | null;
  readonly closeCode: number | null;
  readonly closeReason: string;

  connect(): Promise<void>;
  ready(): Promise<void>;
  close(): void;

  on<K extends keyof EventMap>(event: K, fn: (params: EventMap[K], meta: EventMeta) => void): () => void;
  off<K extends keyof EventMap>(event: K, fn: (params: EventMap[K], meta: EventMeta) => void): void;

  request<T = unknown>(method: string, params?: object, options?: { timeoutMs?: number }): Promise<T>;
  list(params?: ListParams): Promise<ListResult>;
  sync(since: number, limit?: number): Promise<SyncResult>;
  fetchUnreadCount(): Promise<number>;
  markRead(ids: string[]): Promise<{ updated: number; unread_count: number }>;
  markUnread(ids: string[]): Promise<{ updated: number; unread_count: number }>;
  markAllRead(): Promise<{ updated: number; unread_count: 0 }>;
  delete(ids: string[]): Promise<{ deleted: number; unread_count: number }>;
  broadcast(params: {
    title: string;
    message: string;
    type?: string;
    data?: Record<string, unknown>;
  }): Promise<{ accepted: true; event_id: string }>;
  ping(): Promise<"pong">;
  readonly preferences: {
    get(): Promise<Preferences>;
    update(patch: PreferencesPatch): Promise<Preferences>;
    reset(): Promise<Preferences>;
  };
}
