import type { HeraldClient, Preferences } from "@herald/client";
import { act, render, screen, waitFor, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import type { ReactNode } from "react";
import { afterEach, describe, expect, it, vi } from "vitest";

import { HeraldProvider, NotificationBell, NotificationDropdown, NotificationToast, PreferencesPanel } from "../src";
import type { HeraldStrings } from "../src";
import { FakeGateway } from "./gateway";

let clients: HeraldClient[] = [];
afterEach(() => {
  clients.forEach((c) => c.close());
  clients = [];
});

async function mount(ui: ReactNode, { strings, prepare }: { strings?: Partial<HeraldStrings>; prepare?: (g: FakeGateway) => void } = {}) {
  const gateway = new FakeGateway();
  prepare?.(gateway);
  const client = gateway.client();
  clients.push(client);
  const view = render(
    <HeraldProvider client={client} strings={strings}>
      {ui}
    </HeraldProvider>,
  );
  await act(() => client.connect());
  return { gateway, client, view, user: userEvent.setup() };
}

const items = () => screen.queryAllByRole("article");

describe("NotificationBell and NotificationDropdown", () => {
  it("shows the unread badge, opens the inbox, and Escape closes it with the focus back on the bell", async () => {
    const { gateway, user } = await mount(<NotificationBell />, { prepare: (g) => void g.notify({ title: "Quiz 3 is open" }, { live: false }) });
    const bell = screen.getByRole("button", { name: "Notifications, 1 unread" });
    expect(bell.getAttribute("aria-expanded")).toBe("false");
    expect(bell.textContent).toBe("1");
    await user.click(bell);
    expect(bell.getAttribute("aria-expanded")).toBe("true");
    const dialog = screen.getByRole("dialog", { name: "Notifications" });
    await within(dialog).findByText("Quiz 3 is open");
    expect(document.activeElement).toBe(within(dialog).getByRole("tab", { name: "All" }));

    act(() => void gateway.notify({ title: "Live one" }));
    await within(dialog).findByText("Live one");
    await waitFor(() => expect(bell.getAttribute("aria-label")).toBe("Notifications, 2 unread"));

    await user.keyboard("{Escape}");
    expect(screen.queryByRole("dialog")).toBeNull();
    expect(document.activeElement).toBe(bell);
    expect(bell.getAttribute("aria-expanded")).toBe("false");
  });

  it("a click outside closes the dropdown", async () => {
    const { user } = await mount(
      <>
        <button type="button">elsewhere</button>
        <NotificationBell />
      </>,
    );
    await user.click(screen.getByRole("button", { name: "Notifications" }));
    expect(screen.getByRole("dialog")).toBeTruthy();
    await user.click(screen.getByRole("button", { name: "elsewhere" }));
    expect(screen.queryByRole("dialog")).toBeNull();
  });

  it("arrow keys move between tabs and through the feed; Enter opens (marks read)", async () => {
    const { gateway, user } = await mount(<NotificationBell />, {
      prepare: (g) => ["a", "b", "c"].forEach((title) => g.notify({ title }, { live: false })),
    });
    await user.click(screen.getByRole("button", { name: /Notifications/ }));
    await waitFor(() => expect(items()).toHaveLength(3));
    const tabs = screen.getAllByRole("tab");
    expect(tabs.map((t) => t.getAttribute("aria-selected"))).toEqual(["true", "false", "false"]);

    await user.keyboard("{ArrowRight}");
    expect(document.activeElement).toBe(tabs[1]);
    expect(tabs[1].getAttribute("aria-selected")).toBe("true");
    await user.keyboard("{ArrowLeft}");
    expect(document.activeElement).toBe(tabs[0]);
    await waitFor(() => expect(items()).toHaveLength(3));

    await user.keyboard("{ArrowDown}");
    expect(document.activeElement).toBe(items()[0]);
    await user.keyboard("{ArrowDown}{ArrowDown}");
    expect(document.activeElement).toBe(items()[2]);
    expect(items()[2].getAttribute("tabindex")).toBe("0");
    expect(items()[0].getAttribute("tabindex")).toBe("-1");
    await user.keyboard("{Home}");
    expect(document.activeElement).toBe(items()[0]);
    expect(items()[0].className).toContain("herald-unread");
    await user.keyboard("{Enter}");
    await waitFor(() => expect(items()[0].className).not.toContain("herald-unread"));
    expect(gateway.stored.find((n) => n.title === "c")?.read_at).not.toBeNull();
    await user.keyboard("{ArrowUp}");
    expect(document.activeElement).toBe(tabs[0]);
  });

  it("the focus stays in the inbox when the focused item leaves the list (read in Unread, archived, deleted)", async () => {
    const { user } = await mount(<NotificationBell />, {
      prepare: (g) => ["alpha", "bravo", "charlie", "delta"].forEach((title) => g.notify({ title }, { live: false })),
    });
    const bell = screen.getByRole("button", { name: /Notifications/ });
    await user.click(bell);
    const dialog = screen.getByRole("dialog");
    const unreadTab = within(dialog).getByRole("tab", { name: "Unread" });
    const titled = (title: string) => items().find((a) => a.textContent?.includes(title));
    await user.keyboard("{ArrowRight}");
    expect(document.activeElement).toBe(unreadTab);
    await waitFor(() => expect(items()).toHaveLength(4));

    await user.keyboard("{ArrowDown}");
    expect(document.activeElement).toBe(titled("delta"));
    await user.keyboard("{Enter}"); // marks it read: it leaves the Unread tab
    await waitFor(() => expect(items()).toHaveLength(3));
    expect(document.activeElement).toBe(titled("charlie")); // the item now at its place
    await user.keyboard("{ArrowDown}");
    expect(document.activeElement).toBe(titled("bravo"));

    await user.click(within(titled("bravo")!).getByRole("button", { name: "Archive" }));
    await waitFor(() => expect(items()).toHaveLength(2));
    expect(document.activeElement).toBe(titled("alpha"));
    await user.click(within(titled("alpha")!).getByRole("button", { name: "Delete" }));
    await waitFor(() => expect(items()).toHaveLength(1));
    expect(document.activeElement).toBe(titled("charlie")); // the last one
    await user.keyboard("{Enter}");
    await within(dialog).findByText("You're all caught up");
    expect(document.activeElement).toBe(unreadTab); // nothing left: the selected tab

    await user.keyboard("{Escape}");
    expect(screen.queryByRole("dialog")).toBeNull();
    expect(document.activeElement).toBe(bell);
  });

  it("mark all read, delete, archive and action buttons", async () => {
    const { gateway, user } = await mount(<NotificationDropdown />, {
      prepare: (g) => {
        g.notify({ title: "invite", actions: [{ id: "accept", label: "Accept" }, { id: "decline", label: "Decline" }] }, { live: false });
        g.notify({ title: "doomed" }, { live: false });
        g.notify({ title: "old news" }, { live: false });
      },
    });
    await waitFor(() => expect(items()).toHaveLength(3));
    const item = (title: string) => items().find((a) => a.textContent?.includes(title))!;

    await user.click(within(item("doomed")).getByRole("button", { name: "Delete" }));
    await waitFor(() => expect(items()).toHaveLength(2));
    expect(gateway.stored.map((n) => n.title)).toEqual(["invite", "old news"]);

    await user.click(within(item("old news")).getByRole("button", { name: "Archive" }));
    await waitFor(() => expect(items()).toHaveLength(1));
    await user.click(screen.getByRole("tab", { name: "Archived" }));
    await waitFor(() => expect(items().map((a) => a.textContent)).toEqual([expect.stringContaining("old news")]));
    await user.click(within(item("old news")).getByRole("button", { name: "Move to inbox" }));
    await waitFor(() => expect(items()).toHaveLength(0));
    screen.getByText("Nothing archived");
    await user.click(screen.getByRole("tab", { name: "All" }));
    await waitFor(() => expect(items()).toHaveLength(2));

    await user.click(within(item("invite")).getByRole("button", { name: "Accept" }));
    await waitFor(() => expect(within(item("invite")).getByRole("button", { name: "Accept" }).getAttribute("aria-pressed")).toBe("true"));
    expect(gateway.requests.find((r) => r.method === "notifications.act")?.params).toEqual({ id: "n1", action_id: "accept" });

    await user.click(screen.getByRole("button", { name: "Mark all read" }));
    await waitFor(() => expect(items().filter((a) => a.className.includes("herald-unread"))).toHaveLength(0));
    expect(gateway.unread).toBe(0);
    await user.click(screen.getByRole("tab", { name: "Unread" }));
    await screen.findByText("You're all caught up");
  });

  it("a refused action rolls back and says so", async () => {
    const { gateway, user } = await mount(<NotificationDropdown />, {
      prepare: (g) => {
        g.notify({ title: "stays" }, { live: false });
        g.failing.set("notifications.delete", { code: 5003, message: "unavailable" });
      },
    });
    await waitFor(() => expect(items()).toHaveLength(1));
    await user.click(screen.getByRole("button", { name: "Delete" }));
    await screen.findByRole("alert");
    expect(screen.getByRole("alert").textContent).toBe("That didn't work; nothing was changed.");
    expect(items()).toHaveLength(1);
    expect(gateway.stored).toHaveLength(1);
  });

  it("infinite scroll loads the next page near the bottom, to the end", async () => {
    await mount(<NotificationDropdown pageSize={5} />, { prepare: (g) => Array.from({ length: 12 }, () => g.notify({}, { live: false })) });
    await waitFor(() => expect(items()).toHaveLength(5));
    const scroller = screen.getByRole("tabpanel");
    Object.defineProperty(scroller, "clientHeight", { value: 300, configurable: true });
    Object.defineProperty(scroller, "scrollHeight", { value: 400, configurable: true });
    act(() => {
      scroller.scrollTop = 100;
      scroller.dispatchEvent(new Event("scroll"));
    });
    await waitFor(() => expect(items().length).toBeGreaterThanOrEqual(10));
    await waitFor(() => expect(items()).toHaveLength(12));
    await screen.findByText("That's everything");
    expect(items()[11].getAttribute("aria-setsize")).toBe("12");
  });

  it("empty and error states, with a retry", async () => {
    const { gateway, user } = await mount(<NotificationDropdown />, {
      prepare: (g) => g.failing.set("notifications.list", { code: 5003, message: "unavailable" }),
    });
    const alert = await screen.findByRole("alert");
    expect(alert.textContent).toContain("Couldn't load notifications.");
    gateway.failing.clear();
    await user.click(within(alert).getByRole("button", { name: "Try again" }));
    await screen.findByText("No notifications yet");
  });

  it("renderItem replaces the item's content", async () => {
    await mount(<NotificationDropdown renderItem={(n, h) => <span data-testid="custom">{`${n.title} (${h.time})`}</span>} />, {
      prepare: (g) => void g.notify({ title: "custom", created_at: new Date().toISOString() }, { live: false }),
    });
    expect((await screen.findByTestId("custom")).textContent).toBe("custom (just now)");
  });

  it("every string can be replaced (translation)", async () => {
    const strings: Partial<HeraldStrings> = {
      bellLabel: (n) => (n ? `Benachrichtigungen, ${n} ungelesen` : "Benachrichtigungen"),
      inboxTitle: "Benachrichtigungen",
      tabAll: "Alle",
      tabUnread: "Ungelesen",
      tabArchived: "Archiv",
      markAllRead: "Alle als gelesen markieren",
      markRead: "Als gelesen markieren",
      delete: "Löschen",
      archive: "Archivieren",
      typeLabel: (type) => (type === "COURSE_NEW_CONTENT" ? "Neuer Kursinhalt" : type),
      justNow: "gerade eben",
    };
    const { user } = await mount(<NotificationBell />, {
      strings,
      prepare: (g) => void g.notify({ title: "Neue Lektion", created_at: new Date().toISOString() }, { live: false }),
    });
    await user.click(screen.getByRole("button", { name: "Benachrichtigungen, 1 ungelesen" }));
    const dialog = screen.getByRole("dialog", { name: "Benachrichtigungen" });
    expect(within(dialog).getAllByRole("tab").map((t) => t.textContent)).toEqual(["Alle", "Ungelesen", "Archiv"]);
    await within(dialog).findByText("Neue Lektion");
    within(dialog).getByRole("button", { name: "Alle als gelesen markieren" });
    within(dialog).getByRole("button", { name: "Als gelesen markieren" });
    within(dialog).getByRole("button", { name: "Löschen" });
    expect(within(dialog).getByText(/Neuer Kursinhalt/).textContent).toBe("Neuer Kursinhalt · gerade eben");
  });
});

describe("NotificationToast", () => {
  it("toasts live notifications in a polite live region, not replayed ones, and dismisses them", async () => {
    const { gateway, client, user } = await mount(<NotificationToast duration={0} />);
    const region = screen.getByRole("region", { name: "New notifications" });
    expect(region.querySelector("[aria-live=polite]")).not.toBeNull();
    act(() => void gateway.notify({ title: "Grade released", message: "92/100" }));
    await within(region).findByText("Grade released");
    within(region).getByText("92/100");
    // A notification recovered by a sync after a reconnect is listed, not toasted.
    gateway.notify({ title: "missed" }, { live: false });
    act(() => gateway.broadcast("sync:required", {}));
    await waitFor(() => expect(client.watermark).toBe(2));
    // A live one after it is the marker: once it shows, a toast of "missed" would have shown too.
    act(() => void gateway.notify({ title: "After the sync" }));
    await within(region).findByText("After the sync");
    expect(within(region).queryByText("missed")).toBeNull();
    const toast = within(region).getByText("Grade released").closest<HTMLElement>(".herald-toast");
    expect(toast).not.toBeNull();
    await user.click(within(toast as HTMLElement).getByRole("button", { name: "Dismiss" }));
    expect(within(region).queryByText("Grade released")).toBeNull();
    within(region).getByText("After the sync");
  });
});

describe("PreferencesPanel", () => {
  it("saves a switch, locks critical channels, follows other tabs, and saves quiet hours with a time zone", async () => {
    const { gateway, user } = await mount(<PreferencesPanel push={false} timeZones={["UTC", "Europe/Berlin"]} />);
    const toggle = await screen.findByRole("checkbox", { name: "New comment: In-app" });
    expect((toggle as HTMLInputElement).checked).toBe(true);
    await user.click(toggle);
    await waitFor(() => expect(gateway.preferences.types.NEW_COMMENT.in_app).toBe(false));
    expect((toggle as HTMLInputElement).checked).toBe(false);
    await screen.findByText(/^Saved/);

    const locked = screen.getByRole("checkbox", { name: "Security alert: Email (Always on for security)" }) as HTMLInputElement;
    expect(locked.disabled).toBe(true);
    expect(locked.checked).toBe(true);
    expect((screen.getByRole("checkbox", { name: "Security alert: Push" }) as HTMLInputElement).disabled).toBe(false);

    // Another tab turned it back on.
    act(() => gateway.broadcast("preferences:updated", { ...gateway.preferences, types: { ...gateway.preferences.types, NEW_COMMENT: { in_app: true, email: false, push: true } } }));
    await waitFor(() => expect((toggle as HTMLInputElement).checked).toBe(true));

    await user.click(screen.getByRole("checkbox", { name: "Enabled" }));
    await user.selectOptions(screen.getByRole("combobox", { name: "Time zone" }), "Europe/Berlin");
    await user.click(screen.getByRole("button", { name: "Save quiet hours" }));
    await waitFor(() => expect(gateway.preferences.quiet_hours).toEqual({ start: "22:00", end: "07:00", timezone: "Europe/Berlin" }));
  });

  it("quiet hours stored without a time zone (amendment 20) show the browser's zone, and saving stores the zone shown", async () => {
    // The browser's zone, pinned so that it is none of the picker's choices.
    const resolved = Intl.DateTimeFormat.prototype.resolvedOptions;
    vi.spyOn(Intl.DateTimeFormat.prototype, "resolvedOptions").mockImplementation(function (this: Intl.DateTimeFormat) {
      return { ...resolved.call(this), timeZone: "Asia/Tokyo" };
    });
    type Quiet = NonNullable<Preferences["quiet_hours"]>;
    const { gateway, user } = await mount(<PreferencesPanel push={false} timeZones={["UTC", "Europe/Berlin"]} />, {
      prepare: (g) => (g.preferences.quiet_hours = { start: "21:00", end: "06:00" } as Quiet),
    });
    await waitFor(() => expect((screen.getByRole("checkbox", { name: "Enabled" }) as HTMLInputElement).checked).toBe(true));
    const zone = screen.getByRole("combobox", { name: "Time zone" }) as HTMLSelectElement;
    expect(zone.value).toBe("Asia/Tokyo");
    expect(Array.from(zone.options, (o) => o.value)).toEqual(["Asia/Tokyo", "UTC", "Europe/Berlin"]);
    expect(zone.getAttribute("aria-describedby")).toBeTruthy();
    expect(document.getElementById(zone.getAttribute("aria-describedby") ?? "")?.textContent).toBe(
      "No time zone is saved yet, so your profile's applies (else UTC). Saving stores the one shown.",
    );

    // Saving stores what the form shows, the zone included; the note goes.
    await user.click(screen.getByRole("button", { name: "Save quiet hours" }));
    await waitFor(() => expect(gateway.preferences.quiet_hours).toEqual({ start: "21:00", end: "06:00", timezone: "Asia/Tokyo" }));
    await waitFor(() => expect(screen.queryByText(/No time zone is saved yet/)).toBeNull());

    // Another client saves quiet hours without a zone again: the panel follows, still renders.
    act(() => gateway.broadcast("preferences:updated", { ...gateway.preferences, quiet_hours: { start: "23:00", end: "05:00" } }));
    await waitFor(() => expect((screen.getByLabelText("From") as HTMLInputElement).value).toBe("23:00"));
    expect((screen.getByRole("combobox", { name: "Time zone" }) as HTMLSelectElement).value).toBe("Asia/Tokyo");
    await screen.findByText(/No time zone is saved yet/);
  });

  it("a refused change is rolled back and explained", async () => {
    const { gateway, user } = await mount(<PreferencesPanel push={false} />, {
      prepare: (g) => g.failing.set("preferences.update", { code: -32602, message: "in_app cannot be turned off" }),
    });
    const toggle = (await screen.findByRole("checkbox", { name: "Grade released: Push" })) as HTMLInputElement;
    await user.click(toggle);
    expect((await screen.findByRole("alert")).textContent).toBe("in_app cannot be turned off");
    expect(toggle.checked).toBe(true);
    expect(gateway.preferences.types.GRADE_RELEASED.push).toBe(true);
  });

  it("shows push as unsupported where the browser has no Push API", async () => {
    await mount(<PreferencesPanel />);
    await screen.findByText("This browser cannot receive push notifications.");
  });
});
