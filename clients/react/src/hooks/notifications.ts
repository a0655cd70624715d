// The inbox's hooks: the counts (useUnreadCount) and the paged, live list (useNotifications).
import type { AnyHeraldClient, IdsChange, ListParams, Notification } from "@herald/client";
import { useCallback, useEffect, useMemo, useRef, useState } from "react";

import { useClientValue, useHeraldContext } from "../context";

// ---------------------------------------------------------------------------------------- counts

export interface UnreadCount {
  /** Unread notifications (the list's count); 0 until known. */
  unread: number;
  /** Not yet seen (the bell's count); null when the server has no seen state. */
  unseen: number | null;
  /** What a badge shows: unseen where the server counts it, else unread. */
  badge: number;
  /** Mark everything seen (the bell does this when opened); ignores servers without seen state. */
  markAllSeen: () => Promise<void>;
}

export function useUnreadCount(): UnreadCount {
  const { client } = useHeraldContext();
  const unread = useClientValue(client, ["unread", "connected", "state"], (c) => c.unreadCount ?? 0, 0);
  const unseen = useClientValue(client, ["unseen", "connected", "state"], (c) => c.unseenCount, null as number | null);
  const markAllSeen = useCallback(async () => {
    if (!client || client.unseenCount === null || client.unseenCount === 0) return;
    try {
      await client.markSeen("all");
    } catch {
      // A server without notifications.mark_seen (-32601) or a dropped connection: the badge stays.
    }
  }, [client]);
  return { unread, unseen, badge: unseen ?? unread, markAllSeen };
}

// ---------------------------------------------------------------------------------- notifications

export type InboxFilter = "all" | "unread" | "archived";

export interface UseNotificationsOptions {
  filter?: InboxFilter;
  pageSize?: number;
  types?: string[];
  categories?: string[];
}

export interface UseNotifications {
  items: Notification[];
  /** The first page or the next one is on its way. */
  loading: boolean;
  /** The last failed load (the list keeps what it had); cleared by the next successful load. */
  error: Error | null;
  hasMore: boolean;
  loadMore: () => Promise<void>;
  refresh: () => Promise<void>;
  /** Optimistic: the items change at once and roll back if the server refuses (the promise rejects). */
  markRead: (ids: string[]) => Promise<void>;
  markUnread: (ids: string[]) => Promise<void>;
  markAllRead: () => Promise<void>;
  remove: (ids: string[]) => Promise<void>;
  archive: (ids: string[]) => Promise<void>;
  unarchive: (ids: string[]) => Promise<void>;
  act: (id: string, actionId: string) => Promise<void>;
}

interface Page {
  items: Notification[];
  cursor: number | null;
  exhausted: boolean;
}

const EMPTY: Page = { items: [], cursor: null, exhausted: false };

function order(items: Notification[]): Notification[] {
  const time = (n: Notification) => Date.parse(n.created_at) || 0;
  return [...items].sort((a, b) => time(b) - time(a) || (b.seq ?? 0) - (a.seq ?? 0));
}

/**
 * A page-by-page list of the user's notifications, kept live by the server's frames. Resets when the
 * filter changes and after a reconnect (reads and deletes made elsewhere meanwhile).
 */
export function useNotifications({ filter = "all", pageSize = 20, types, categories }: UseNotificationsOptions = {}): UseNotifications {
  const { client } = useHeraldContext();
  const [page, setPage] = useState<Page>(EMPTY);
  const [loading, setLoading] = useState(false);
  const [error, setError] = useState<Error | null>(null);
  const pageRef = useRef(page);
  pageRef.current = page;
  const loadingRef = useRef<Promise<void> | null>(null);
  const generation = useRef(0);
  const typesKey = types?.join(",") ?? "";
  const categoriesKey = categories?.join(",") ?? "";

  const matches = useCallback(
    (n: Notification) => {
      if (filter === "unread" && n.read_at) return false;
      if (filter === "archived" && !n.archived_at) return false;
      if (filter !== "archived" && n.archived_at) return false;
      if (typesKey && !typesKey.split(",").includes(n.type)) return false;
      if (categoriesKey && !categoriesKey.split(",").includes(n.category)) return false;
      return true;
    },
    [filter, typesKey, categoriesKey],
  );

  const update = useCallback((change: (items: Notification[]) => Notification[]) => {
    setPage((current) => {
      const items = change(current.items);
      if (items === current.items) return current; // nothing changed: no render
      const next = { ...current, items };
      pageRef.current = next;
      return next;
    });
  }, []);
  // The live changes since the first page was asked for: that page was read before them, so they are
  // applied again to it when it arrives (a notification stored meanwhile would otherwise vanish).
  const sinceReset = useRef<((items: Notification[]) => Notification[])[] | null>(null);
  const live = useCallback(
    (change: (items: Notification[]) => Notification[]) => {
      sinceReset.current?.push(change);
      update(change);
    },
    [update],
  );

  const fetchPage = useCallback(
    (reset: boolean) => {
      if (!client) return Promise.resolve();
      if (!reset && (loadingRef.current || pageRef.current.exhausted)) return loadingRef.current ?? Promise.resolve();
      const mine = reset ? ++generation.current : generation.current;
      const params: ListParams = { limit: pageSize };
      if (filter === "unread") params.unread_only = true;
      if (filter === "archived") params.archived = true;
      if (typesKey) params.types = typesKey.split(",");
      if (categoriesKey) params.categories = categoriesKey.split(",");
      const cursor = reset ? null : pageRef.current.cursor;
      if (cursor !== null) params.before = cursor;
      if (reset) sinceReset.current = [];
      setLoading(true);
      const run = (async () => {
        try {
          const result = await client.list(params);
          if (mine !== generation.current) return;
          let items: Notification[];
          if (reset) {
            items = order(result.items);
            for (const change of sinceReset.current ?? []) items = change(items);
          } else {
            const known = new Set(pageRef.current.items.map((n) => n.id));
            items = order([...pageRef.current.items, ...result.items.filter((n) => !known.has(n.id))]);
          }
          const next = { items, cursor: result.next_cursor, exhausted: result.next_cursor === null };
          pageRef.current = next;
          setPage(next);
          setError(null);
        } catch (err) {
          if (mine === generation.current) setError(err as Error);
        } finally {
          if (mine === generation.current) {
            loadingRef.current = null;
            if (reset) sinceReset.current = null;
            setLoading(false);
          }
        }
      })();
      loadingRef.current = run;
      return run;
    },
    [client, filter, pageSize, typesKey, categoriesKey],
  );

  // First page once connected, again on every later `connected` (a reconnect) and on a filter change.
  useEffect(() => {
    if (!client) return undefined;
    pageRef.current = EMPTY;
    setPage(EMPTY);
    loadingRef.current = null;
    let started = false;
    const start = () => {
      started = true;
      void fetchPage(true);
    };
    if (client.state === "open") start();
    const offConnected = client.on("connected", () => start());
    const offState = client.on("state", ({ state }) => {
      if (state === "open" && !started) start();
    });
    return () => {
      generation.current++;
      offConnected();
      offState();
    };
  }, [client, fetchPage]);

  // Live frames.
  useEffect(() => {
    if (!client) return undefined;
    const now = () => new Date().toISOString();
    const touch = (ids: string[] | undefined, all: boolean | undefined, change: (n: Notification) => Notification) =>
      live((items) => items.map((n) => (all || ids?.includes(n.id) ? change(n) : n)));
    const drop = (ids: string[] | undefined) => live((items) => items.filter((n) => !ids?.includes(n.id)));
    // An item archived or unarchived elsewhere that this list should now show: the frame carries only ids.
    const reloadFor = (ids: string[] | undefined) => {
      if (ids?.some((id) => !pageRef.current.items.some((n) => n.id === id))) void fetchPage(true);
    };
    const offs = [
      client.on("notification:new", (n) => {
        // A collapsed notification's new version replaces the old one by id. It may no longer match
        // this list: a collapse un-archives (amendment 12) and may change the type. Then the old
        // version leaves the list rather than stay there stale. (The counts are the client's: it
        // fetches them again for a newer version.)
        const others = (items: Notification[]) => items.filter((other) => other.id !== n.id);
        if (matches(n)) live((items) => order([n, ...others(items)]));
        else live((items) => (items.some((other) => other.id === n.id) ? others(items) : items));
      }),
      client.on("notification:read", ({ ids, all }: IdsChange) => {
        const at = now();
        touch(ids, all, (n) => (n.read_at ? n : { ...n, read_at: at }));
        if (filter === "unread") live((items) => items.filter((n) => !n.read_at));
      }),
      client.on("notification:unread", ({ ids, all }: IdsChange) => {
        touch(ids, all, (n) => ({ ...n, read_at: null }));
        if (filter === "unread") reloadFor(ids); // an item marked unread elsewhere joins this list
      }),
      client.on("notification:seen", ({ ids, all }: IdsChange) => {
        const at = now();
        touch(ids, all, (n) => (n.seen_at ? n : { ...n, seen_at: at }));
      }),
      client.on("notification:deleted", ({ ids }: IdsChange) => drop(ids)),
      client.on("notification:archived", ({ ids }: IdsChange) => {
        if (filter === "archived") {
          touch(ids, false, (n) => ({ ...n, archived_at: n.archived_at ?? now() }));
          reloadFor(ids);
        } else drop(ids);
      }),
      client.on("notification:unarchived", ({ ids }: IdsChange) => {
        if (filter === "archived") drop(ids);
        else {
          touch(ids, false, (n) => ({ ...n, archived_at: null }));
          reloadFor(ids);
        }
      }),
      client.on("notification:acted", (params) => {
        const at = params.acted_at ?? now();
        touch([params.id], false, (n) => ({ ...n, acted_at: at, action_id: params.action_id, read_at: n.read_at ?? at }));
        if (filter === "unread") drop([params.id]); // acting reads it (amendment 11)
      }),
    ];
    return () => offs.forEach((off) => off());
  }, [client, matches, filter, live, fetchPage]);

  /** Apply `change` now; undo it (for the items it touched) if `send` fails. */
  const optimistic = useCallback(
    async (change: (items: Notification[]) => Notification[], send: (c: AnyHeraldClient) => Promise<unknown>) => {
      if (!client) throw new Error("not connected");
      const before = pageRef.current.items;
      const after = change(before);
      const touched = new Map(before.filter((n) => !after.includes(n)).map((n) => [n.id, n]));
      update(() => after);
      try {
        await send(client);
      } catch (err) {
        // Roll back only what this change touched; frames that arrived meanwhile stay.
        update((items) => {
          const restored = items.map((n) => touched.get(n.id) ?? n);
          const present = new Set(restored.map((n) => n.id));
          return order([...restored, ...[...touched.values()].filter((n) => !present.has(n.id))]);
        });
        throw err;
      }
    },
    [client, update],
  );

  const api = useMemo(() => {
    const at = () => new Date().toISOString();
    const isIn = (ids: string[]) => (n: Notification) => ids.includes(n.id);
    const setRead = (ids: string[], read: boolean) => (items: Notification[]) => {
      const changed = items.map((n) => (isIn(ids)(n) && Boolean(n.read_at) !== read ? { ...n, read_at: read ? at() : null } : n));
      return filter === "unread" && read ? changed.filter((n) => !isIn(ids)(n)) : changed;
    };
    const without = (ids: string[]) => (items: Notification[]) => items.filter((n) => !isIn(ids)(n));
    return {
      markRead: (ids: string[]) => optimistic(setRead(ids, true), (c) => c.markRead(ids)),
      markUnread: (ids: string[]) => optimistic(setRead(ids, false), (c) => c.markUnread(ids)),
      markAllRead: () =>
        optimistic(
          (items) => (filter === "unread" ? [] : items.map((n) => (n.read_at ? n : { ...n, read_at: at() }))),
          (c) => c.markAllRead(),
        ),
      remove: (ids: string[]) => optimistic(without(ids), (c) => c.delete(ids)),
      archive: (ids: string[]) => optimistic(filter === "archived" ? (i) => i : without(ids), (c) => c.archive(ids)),
      unarchive: (ids: string[]) => optimistic(filter === "archived" ? without(ids) : (i) => i, (c) => c.unarchive(ids)),
      act: (id: string, actionId: string) =>
        optimistic(
          (items) =>
            filter === "unread"
              ? without([id])(items) // acting reads it (amendment 11)
              : items.map((n) => (n.id === id ? { ...n, action_id: actionId, acted_at: at(), read_at: n.read_at ?? at() } : n)),
          (c) => c.act(id, actionId),
        ),
    };
  }, [optimistic, filter]);

  const loadMore = useCallback(() => fetchPage(false), [fetchPage]);
  const refresh = useCallback(() => fetchPage(true), [fetchPage]);
  return { items: page.items, loading, error, hasMore: !page.exhausted, loadMore, refresh, ...api };
}
