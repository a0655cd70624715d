import type { HeraldClient } from "@herald/client";
import { act, renderHook, waitFor } from "@testing-library/react";
import type { ReactNode } from "react";
import { afterEach, describe, expect, it } from "vitest";

import { HeraldProvider, useHerald, useNotifications, usePreferences, useUnreadCount } from "../src";
import { FakeGateway } from "./gateway";

let clients: HeraldClient[] = [];
afterEach(() => {
  clients.forEach((c) => c.close());
  clients = [];
});

function setup() {
  const gateway = new FakeGateway();
  const client = gateway.client();
  clients.push(client);
  const wrapper = ({ children }: { children: ReactNode }) => <HeraldProvider client={client}>{children}</HeraldProvider>;
  return { gateway, client, wrapper };
}

describe("useHerald", () => {
  it("follows the connection state", async () => {
    const { client, wrapper } = setup();
    const { result } = renderHook(() => useHerald(), { wrapper });
    expect(result.current.state).toBe("idle");
    await act(() => client.connect());
    expect(result.current.state).toBe("open");
    expect(result.current.userId).toBe("u1");
  });
});

describe("useUnreadCount", () => {
  it("counts unread from connected and live frames; unseen is null without server support", async () => {
    const { gateway, client, wrapper } = setup();
    gateway.notify({}, { live: false });
    const { result } = renderHook(() => useUnreadCount(), { wrapper });
    await act(() => client.connect());
    expect(result.current.unread).toBe(1);
    expect(result.current.unseen).toBeNull();
    expect(result.current.badge).toBe(1);
    act(() => void gateway.notify());
    await waitFor(() => expect(result.current.unread).toBe(2));
  });
});

describe("useNotifications", () => {
  it("loads the first page, pages on, and shows live notifications at the top", async () => {
    const { gateway, client, wrapper } = setup();
    for (let i = 0; i < 5; i++) gateway.notify({}, { live: false });
    const { result } = renderHook(() => useNotifications({ pageSize: 2 }), { wrapper });
    await act(() => client.connect());
    await waitFor(() => expect(result.current.items.map((n) => n.id)).toEqual(["n5", "n4"]));
    expect(result.current.hasMore).toBe(true);
    await act(() => result.current.loadMore());
    await act(() => result.current.loadMore());
    expect(result.current.items.map((n) => n.id)).toEqual(["n5", "n4", "n3", "n2", "n1"]);
    expect(result.current.hasMore).toBe(false);
    act(() => void gateway.notify({ title: "live" }));
    await waitFor(() => expect(result.current.items[0].title).toBe("live"));
  });

  it("keeps what arrives live while the first page loads: a page read before it does not undo it", async () => {
    const { gateway, client, wrapper } = setup();
    gateway.notify({}, { live: false });
    const release = gateway.hold("notifications.list");
    const { result } = renderHook(() => useNotifications(), { wrapper });
    await act(() => client.connect());
    await waitFor(() => expect(gateway.requests.map((r) => r.method)).toContain("notifications.list"));
    // Stored after the page's query ran, so the page will not have it; read in another tab meanwhile.
    const late = { ...gateway.stored[0], id: "late", seq: 2, title: "late", created_at: "2026-01-01T01:00:00.000Z" };
    act(() => {
      gateway.broadcast("notification:new", late);
      gateway.broadcast("notification:read", { ids: ["n1"] });
    });
    await waitFor(() => expect(result.current.items.map((n) => n.id)).toEqual(["late"]));
    act(() => release());
    await waitFor(() => expect(result.current.loading).toBe(false));
    expect(result.current.items.map((n) => n.id)).toEqual(["late", "n1"]);
    expect(result.current.items[1].read_at).not.toBeNull();
  });

  it("marks read optimistically, before the server answers", async () => {
    const { gateway, client, wrapper } = setup();
    gateway.notify({}, { live: false });
    const release = gateway.hold("notifications.mark_read");
    const { result } = renderHook(() => useNotifications(), { wrapper });
    await act(() => client.connect());
    await waitFor(() => expect(result.current.items).toHaveLength(1));
    let done!: Promise<void>;
    act(() => {
      done = result.current.markRead(["n1"]);
    });
    expect(result.current.items[0].read_at).not.toBeNull(); // the server has not answered yet
    expect(gateway.stored[0].read_at).toBeNull();
    release();
    await act(() => done);
    expect(gateway.stored[0].read_at).not.toBeNull();
  });

  it("rolls an optimistic change back when the server refuses it", async () => {
    const { gateway, client, wrapper } = setup();
    gateway.notify({}, { live: false });
    gateway.notify({}, { live: false });
    gateway.failing.set("notifications.mark_read", { code: -32603, message: "boom" });
    gateway.failing.set("notifications.delete", { code: 5003, message: "unavailable" });
    const { result } = renderHook(() => useNotifications(), { wrapper });
    await act(() => client.connect());
    await waitFor(() => expect(result.current.items).toHaveLength(2));
    await act(async () => {
      await expect(result.current.markRead(["n2"])).rejects.toMatchObject({ code: -32603 });
    });
    expect(result.current.items.find((n) => n.id === "n2")?.read_at).toBeNull();
    await act(async () => {
      await expect(result.current.remove(["n1"])).rejects.toMatchObject({ code: 5003 });
    });
    expect(result.current.items.map((n) => n.id)).toEqual(["n2", "n1"]);
  });

  it("filters: unread drops read items, archived lists only archived ones", async () => {
    const { gateway, client, wrapper } = setup();
    gateway.notify({}, { live: false });
    gateway.notify({ archived_at: "2026-01-02T00:00:00Z" }, { live: false });
    const unread = renderHook(() => useNotifications({ filter: "unread" }), { wrapper });
    const archived = renderHook(() => useNotifications({ filter: "archived" }), { wrapper });
    await act(() => client.connect());
    await waitFor(() => expect(unread.result.current.items.map((n) => n.id)).toEqual(["n1"]));
    await waitFor(() => expect(archived.result.current.items.map((n) => n.id)).toEqual(["n2"]));
    await act(() => unread.result.current.markRead(["n1"]));
    expect(unread.result.current.items).toEqual([]);
    await act(() => archived.result.current.unarchive(["n2"]));
    expect(archived.result.current.items).toEqual([]);
  });

  it("an item archived or unarchived in another list (another tab) moves between the lists", async () => {
    const { gateway, client, wrapper } = setup();
    gateway.notify({}, { live: false });
    gateway.notify({}, { live: false });
    const inbox = renderHook(() => useNotifications(), { wrapper });
    const archived = renderHook(() => useNotifications({ filter: "archived" }), { wrapper });
    await act(() => client.connect());
    await waitFor(() => expect(inbox.result.current.items.map((n) => n.id)).toEqual(["n2", "n1"]));
    await waitFor(() => expect(archived.result.current.loading).toBe(false));
    expect(archived.result.current.items).toEqual([]);
    await act(() => inbox.result.current.archive(["n1"]));
    expect(inbox.result.current.items.map((n) => n.id)).toEqual(["n2"]);
    await waitFor(() => expect(archived.result.current.items.map((n) => n.id)).toEqual(["n1"]));
    await act(() => archived.result.current.unarchive(["n1"]));
    expect(archived.result.current.items).toEqual([]);
    await waitFor(() => expect(inbox.result.current.items.map((n) => n.id)).toEqual(["n2", "n1"]));
    expect(inbox.result.current.items[1].archived_at).toBeNull();
  });

  it("a collapse un-archives an item: it leaves the Archived list and comes back to the inbox", async () => {
    const { gateway, client, wrapper } = setup();
    gateway.notify({}, { live: false });
    const first = gateway.notify({ collapse_key: "thread-1", archived_at: "2026-01-02T00:00:00Z" }, { live: false });
    const inbox = renderHook(() => useNotifications(), { wrapper });
    const archived = renderHook(() => useNotifications({ filter: "archived" }), { wrapper });
    await act(() => client.connect());
    await waitFor(() => expect(archived.result.current.items.map((n) => n.id)).toEqual(["n2"]));
    await waitFor(() => expect(inbox.result.current.items.map((n) => n.id)).toEqual(["n1"]));
    // Amendment 12: the next event with the key collapses into it: a higher seq, count + 1, un-archived.
    const collapsed = { ...first, seq: 3, count: 2, title: "2 new replies", archived_at: null, created_at: "2026-01-03T00:00:00.000Z" };
    gateway.stored[1] = collapsed;
    act(() => gateway.broadcast("notification:new", collapsed));
    await waitFor(() => expect(inbox.result.current.items.map((n) => n.id)).toEqual(["n2", "n1"]));
    expect(inbox.result.current.items[0].title).toBe("2 new replies");
    expect(archived.result.current.items).toEqual([]);
  });

  it("a collapse that changes an item's type drops it from a list filtered to the old type", async () => {
    const { gateway, client, wrapper } = setup();
    const first = gateway.notify({ type: "NEW_COMMENT", category: "social", collapse_key: "k" }, { live: false });
    const comments = renderHook(() => useNotifications({ types: ["NEW_COMMENT"] }), { wrapper });
    await act(() => client.connect());
    await waitFor(() => expect(comments.result.current.items.map((n) => n.id)).toEqual(["n1"]));
    act(() => gateway.broadcast("notification:new", { ...first, seq: 2, count: 2, type: "GRADE_RELEASED", category: "assessment" }));
    await waitFor(() => expect(comments.result.current.items).toEqual([]));
  });

  it("unread filter: an item marked unread elsewhere joins the list, an item acted on leaves it", async () => {
    const { gateway, client, wrapper } = setup();
    gateway.notify({ read_at: "2026-01-01T00:00:00Z" }, { live: false });
    gateway.notify({}, { live: false });
    const { result } = renderHook(() => useNotifications({ filter: "unread" }), { wrapper });
    await act(() => client.connect());
    await waitFor(() => expect(result.current.items.map((n) => n.id)).toEqual(["n2"]));
    // Another device marks n1 unread: the frame carries only its id.
    act(() => {
      gateway.stored[0].read_at = null;
      gateway.broadcast("notification:unread", { ids: ["n1"], unread_count: 2 });
    });
    await waitFor(() => expect(result.current.items.map((n) => n.id)).toEqual(["n2", "n1"]));
    // Another device acts on n2, which reads it (amendment 11).
    act(() => gateway.broadcast("notification:acted", { id: "n2", action_id: "open", acted_at: "2026-01-02T00:00:00Z", unread_count: 1 }));
    await waitFor(() => expect(result.current.items.map((n) => n.id)).toEqual(["n1"]));
  });

  it("reloads after a reconnect", async () => {
    const { gateway, client, wrapper } = setup();
    gateway.notify({}, { live: false });
    const { result } = renderHook(() => useNotifications(), { wrapper });
    await act(() => client.connect());
    await waitFor(() => expect(result.current.items).toHaveLength(1));
    gateway.stored = []; // deleted elsewhere while this tab was away
    act(() => gateway.sockets.forEach((s) => s.close(1006, "network")));
    await waitFor(() => expect(result.current.items).toHaveLength(0));
  });
});

describe("usePreferences", () => {
  it("updates optimistically, rolls back on a refusal, and follows preferences:updated", async () => {
    const { gateway, client, wrapper } = setup();
    const { result } = renderHook(() => usePreferences(), { wrapper });
    await act(() => client.connect());
    await waitFor(() => expect(result.current.preferences).not.toBeNull());
    await act(() => result.current.update({ types: { NEW_COMMENT: { in_app: false } } }));
    expect(result.current.preferences?.types.NEW_COMMENT.in_app).toBe(false);

    gateway.failing.set("preferences.update", { code: -32602, message: "critical channel" });
    await act(async () => {
      await expect(result.current.update({ types: { SECURITY_ALERT: { email: false } } })).rejects.toMatchObject({ code: -32602 });
    });
    expect(result.current.preferences?.types.SECURITY_ALERT.email).toBe(true);
    expect(result.current.error).toMatchObject({ code: -32602 });

    act(() => gateway.broadcast("preferences:updated", { ...gateway.preferences, quiet_hours: { start: "21:00", end: "06:00", timezone: "UTC" } }));
    await waitFor(() => expect(result.current.preferences?.quiet_hours?.start).toBe("21:00"));
  });

  it("a failed save that overlapped a later one that succeeded leaves the server's preferences", async () => {
    const { gateway, client, wrapper } = setup();
    // The first preferences.update waits, then fails (5003: the worker did not answer); the second succeeds.
    let failFirst!: () => void;
    const firstFails = new Promise<void>((resolve) => (failFirst = resolve));
    const answer = gateway.answer.bind(gateway);
    let updates = 0;
    gateway.answer = async (socket, frame) => {
      if (frame.method !== "preferences.update" || updates++ > 0) return answer(socket, frame);
      await firstFails;
      return socket.push({ id: frame.id, error: { code: 5003, message: "worker did not answer" } });
    };
    const { result } = renderHook(() => usePreferences(), { wrapper });
    await act(() => client.connect());
    await waitFor(() => expect(result.current.preferences).not.toBeNull());
    let first!: Promise<void>;
    act(() => {
      first = result.current.update({ types: { NEW_COMMENT: { email: true } } });
    });
    await act(() => result.current.update({ types: { COURSE_UPDATE: { push: false } } }));
    expect(result.current.saving).toBe(true); // the first is still in flight
    await act(async () => {
      failFirst();
      await expect(first).rejects.toMatchObject({ code: 5003 });
    });
    await waitFor(() => expect(result.current.saving).toBe(false));
    await waitFor(() => expect(result.current.preferences?.types.COURSE_UPDATE.push).toBe(false));
    await waitFor(() => expect(result.current.preferences?.types.NEW_COMMENT.email).toBe(false)); // never saved
    expect(gateway.preferences.types.COURSE_UPDATE.push).toBe(false);
  });
});
