// Types of @herald/client (clients/js/herald.js): the Herald WebSocket protocol, docs/protocol.md.

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
  /** When the bell last showed it (null or absent: unseen; absent on servers without seen state). */
  seen_at?: string | null;
  archived_at?: string | null;
  /** Up to 3 buttons; `notifications.act` records the choice. */
  actions?: NotificationAction[];
  /** Where a click on the notification goes. */
  url?: string | null;
  acted_at?: string | null;
  action_id?: string | null;
  /** How many events a collapsed notification stands for. */
  count?: number;
  /** RFC 3339: when it disappears from the inbox, the counts and sync (§10); null: never. */
  expires_at?: string | null;
  [extra: string]: unknown;
}

export interface NotificationAction {
  id: string;
  label: string;
  url?: string;
}

/** "HH:MM" (24-hour) to "HH:MM". Without `timezone` the profile's time zone applies, else UTC (amendment 20). */
export interface QuietHours {
  start: string;
  end: string;
  /** An IANA time zone; absent when none was given. */
  timezone?: string;
}

export interface Preferences {
  channels: Record<Channel, boolean>;
  types: Record<string, Record<Channel, boolean>>;
  quiet_hours: QuietHours | null;
  updated_at: string | null;
}

export type PreferencesPatch = {
  channels?: Partial<Record<Channel, boolean>>;
  types?: Record<string, Partial<Record<Channel, boolean>>>;
  /** `timezone` absent or null: the profile's time zone applies (amendment 20). */
  quiet_hours?: { start: string; end: string; timezone?: string | null } | null;
};

export interface ListParams {
  limit?: number;
  /** A seq (the previous page's next_cursor): the page before it. */
  before?: number;
  /** 1–1000: skip (page − 1) × limit items instead of following `before`; not with `before` (amendment 26). */
  page?: number;
  unread_only?: boolean;
  types?: string[];
  categories?: string[];
  /** false (default): the inbox without archived items; true: only archived ones; null: both. */
  archived?: boolean | null;
}

export interface ListResult {
  items: Notification[];
  next_cursor: number | null;
  total: number;
  unread_count: number;
  unseen_count?: number;
}

export interface SyncResult {
  items: Notification[];
  has_more: boolean;
}

export type ClientState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

/** A SharedHeraldClient's part: only the leader tab holds a socket. */
export type TabRole = "idle" | "electing" | "leader" | "follower";

export interface ConnectedParams {
  user_id: string;
  connection_id: string;
  unread_count?: number;
  unseen_count?: number;
  last_seq?: number;
}

export interface IdsChange {
  ids?: string[];
  all?: boolean;
  unread_count?: number;
  unseen_count?: number;
}

export interface CountResult {
  updated?: number;
  deleted?: number;
  unread_count?: number;
  unseen_count?: number;
}

/** notifications.mark_read / mark_unread / mark_all_read. */
export interface UpdatedResult {
  updated: number;
  unread_count: number;
  /** Absent on servers without seen state. */
  unseen_count?: number;
}

/** notifications.delete. */
export interface DeletedResult {
  deleted: number;
  unread_count: number;
  /** Absent on servers without seen state. */
  unseen_count?: number;
}

/** notifications.act (§10). */
export interface ActResult {
  /** True when this call recorded the choice (false: acted with this action before, or not the user's id). */
  acted: boolean;
  /** The recorded action; null for an id that is not the user's (or expired). */
  action_id: string | null;
  /** RFC 3339; null when nothing was recorded. */
  acted_at: string | null;
  unread_count: number;
  unseen_count: number;
}

export interface PushSubscriptionJSONLike {
  endpoint?: string;
  expirationTime?: number | null;
  keys?: Record<string, string>;
}

export interface PushRegistrationLike {
  pushManager: {
    getSubscription(): Promise<{ endpoint: string; toJSON(): PushSubscriptionJSONLike; unsubscribe(): Promise<boolean> } | null>;
    subscribe(options: { userVisibleOnly: boolean; applicationServerKey: Uint8Array }): Promise<{
      endpoint: string;
      toJSON(): PushSubscriptionJSONLike;
      unsubscribe(): Promise<boolean>;
    }>;
  };
}

export interface EventMap {
  connected: ConnectedParams;
  "notification:new": Notification;
  "notification:read": IdsChange;
  "notification:unread": IdsChange;
  "notification:deleted": IdsChange;
  "notification:seen": IdsChange;
  "notification:archived": IdsChange;
  "notification:unarchived": IdsChange;
  "notification:acted": { id: string; action_id: string; acted_at?: string; unread_count?: number; unseen_count?: number };
  "preferences:updated": Preferences;
  "sync:required": Record<string, never>;
  unread: { count: number };
  unseen: { count: number };
  role: { role: TabRole };
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
  /** Resume from this seq: the first connection syncs what came after it, as a reconnect does. */
  watermark?: number;
}

export interface SharedClientOptions extends ClientOptions {
  /** Tabs with the same key share one socket; default: the URLs and the token's `sub`. */
  shareKey?: string;
  /** Leader heartbeat when the browser lacks Web Locks (1000 ms). */
  heartbeatMs?: number;
  BroadcastChannel?: typeof BroadcastChannel | null;
  locks?: LockManager | null;
  /** createHeraldClient only: false = one socket per tab even where BroadcastChannel exists. */
  shareTabs?: boolean;
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

export function base64UrlToBytes(text: string): Uint8Array;

/** What HeraldClient and SharedHeraldClient have in common. */
export abstract class HeraldApi {
  readonly state: ClientState;
  readonly userId: string | null;
  readonly connectionId: string | null;
  /** Kept in step with connected, notification:* frames and request results; null until known. */
  readonly unreadCount: number | null;
  /** The bell's count (§10); null until known, and on servers without seen state. */
  readonly unseenCount: number | null;
  /** Highest seq below which nothing can be missing; sync resumes from here. Null until a `connected`
   * or a `notifications.unread_count` reply carried `last_seq` (the client then anchors it itself). */
  readonly watermark: number | null;
  readonly closeCode: number | null;
  readonly closeReason: string;
  /** The gateway URL in use (or tried next). */
  readonly url: string;

  connect(): Promise<void>;
  ready(): Promise<void>;
  close(): void;

  on<K extends keyof EventMap>(event: K, fn: (params: EventMap[K], meta: EventMeta) => void): () => void;
  off<K extends keyof EventMap>(event: K, fn: (params: EventMap[K], meta: EventMeta) => void): void;

  request<T = unknown>(method: string, params?: object, options?: { timeoutMs?: number }): Promise<T>;
  list(params?: ListParams): Promise<ListResult>;
  sync(since: number, limit?: number): Promise<SyncResult>;
  fetchUnreadCount(): Promise<number>;
  markRead(ids: string[]): Promise<UpdatedResult>;
  markUnread(ids: string[]): Promise<UpdatedResult>;
  /** unread_count is 0 unless a notification was stored while the server marked them. */
  markAllRead(): Promise<UpdatedResult>;
  markSeen(ids: string[] | "all"): Promise<CountResult>;
  delete(ids: string[]): Promise<DeletedResult>;
  archive(ids: string[]): Promise<CountResult>;
  unarchive(ids: string[]): Promise<CountResult>;
  act(id: string, actionId: string): Promise<ActResult>;
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
  readonly push: {
    vapidKey(): Promise<string>;
    subscribe(registration: PushRegistrationLike, options?: { device?: string }): Promise<{ id: string; subscription: unknown }>;
    unsubscribe(registration?: PushRegistrationLike): Promise<{ removed: number }>;
    list(): Promise<{ items: { id: string; endpoint: string; device: string | null; created_at: string }[] }>;
  };
}

/** One WebSocket (to the first URL that answers, failing over between them). */
export class HeraldClient extends HeraldApi {
  constructor(urls: string | string[], options: ClientOptions);
  readonly urls: string[];
}

/** One socket per browser: the tabs elect a leader that holds it and relays for the others. */
export class SharedHeraldClient extends HeraldApi {
  constructor(urls: string | string[], options: SharedClientOptions);
  readonly urls: string[];
  readonly tabId: string;
  readonly role: TabRole;
  readonly isLeader: boolean;
}

export type AnyHeraldClient = HeraldClient | SharedHeraldClient;

/** SharedHeraldClient where BroadcastChannel exists (unless shareTabs is false), else HeraldClient. */
export function createHeraldClient(urls: string | string[], options: SharedClientOptions): HeraldClient | SharedHeraldClient;
