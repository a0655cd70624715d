// Herald demo inbox: a bell with the unread badge, an infinitely scrolling list, toasts and a preferences
// drawer, all driven by the browser client (/client/herald.js). No framework, no build step.
//
// Sign-in is dev-only: the page asks the gateway's GET /dev/token (served only with HERALD_DEV_TOKENS=1)
// for a token. A real front end gets its JWT from the product's own auth service instead.
import { HeraldClient, HeraldRequestError } from "/client/herald.js";

const PAGE_SIZE = 20;
const TOAST_MS = 5000;
const CHANNELS = ["in_app", "email", "push"];
// 24×24 SVG paths; emoji would depend on the fonts installed where the page runs.
const ICONS = {
  course: "M4 4.5A2.5 2.5 0 0 1 6.5 2H20v17H6.5a1.5 1.5 0 0 0 0 3H20v-2h0v2H6.5A2.5 2.5 0 0 1 4 19.5zM8 6v2h8V6z",
  assessment: "M9 2h6v2h4v18H5V4h4zm0 2v2h6V4zm-1.5 9.5 3 3 6-6-1.4-1.4-4.6 4.6-1.6-1.6z",
  progress: "M7 3h10v2h4v3a5 5 0 0 1-5 5h-.3A5 5 0 0 1 13 15.9V19h4v2H7v-2h4v-3.1A5 5 0 0 1 8.3 13H8a5 5 0 0 1-5-5V5h4zm0 4H5v1a3 3 0 0 0 2 2.8zm10 0v3.8A3 3 0 0 0 19 8V7z",
  social: "M4 3h16a2 2 0 0 1 2 2v11a2 2 0 0 1-2 2H8l-5 4V5a2 2 0 0 1 1-2zm3 6v2h10V9zm0-3v2h10V6zm0 6v2h6v-2z",
  system: "M3 10v4a1 1 0 0 0 1 1h2l4 5h2v-5l7 4V5l-7 4H4a1 1 0 0 0-1 1z",
  other: "M12 22a2.5 2.5 0 0 0 2.45-2h-4.9A2.5 2.5 0 0 0 12 22zm7-6V11a7 7 0 0 0-14 0v5l-2 2v1h18v-1z",
  check: "M9.5 16.2 5.3 12l-1.4 1.4 5.6 5.6L20.6 7.9l-1.4-1.4z",
  dot: "M12 7a5 5 0 1 1 0 10 5 5 0 0 1 0-10z",
  trash: "M9 3h6l1 2h4v2H4V5h4zm-3 6h12l-1 12H7z",
};
// The catalog's grouping for the preferences grid; types an operator added show under "Other".
const CATEGORIES = {
  Course: ["COURSE_NEW_CONTENT", "COURSE_UPDATE", "COURSE_SCHEDULE_CHANGE"],
  Assessment: ["ASSIGNMENT_DEADLINE", "QUIZ_AVAILABLE", "GRADE_RELEASED"],
  Progress: ["MILESTONE_ACHIEVED", "CERTIFICATE_ISSUED", "COURSE_COMPLETED"],
  Social: ["NEW_COMMENT", "NEW_REPLY", "INSTRUCTOR_MESSAGE"],
  System: ["SYSTEM_ANNOUNCEMENT", "SECURITY_ALERT"],
};

const $ = (id) => document.getElementById(id);
const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/notifications`;

const inbox = {
  client: null,
  user: null,
  items: new Map(), // id → notification, everything currently listed
  filter: "all",
  cursor: null,
  exhausted: false,
  loading: null,
  preferences: null,
};
// For tests and curious developers: the live client and inbox state.
window.heraldDemo = inbox;

// ------------------------------------------------------------------------------------------- sign in

function tokenSource(user) {
  // Tokens are cached until a minute before expiry, so a reconnect while the gateway restarts does not
  // depend on /dev/token; while the gateway is unreachable the fetch is retried rather than failing.
  let cached = null;
  return async function getToken() {
    if (cached && cached.exp * 1000 - Date.now() > 60000) return cached.token;
    for (let attempt = 0; ; attempt++) {
      let response;
      try {
        response = await fetch(`/dev/token?user=${encodeURIComponent(user)}`, { cache: "no-store" });
      } catch {
        await new Promise((resolve) => setTimeout(resolve, Math.min(500 * 2 ** attempt, 5000)));
        continue;
      }
      if (!response.ok) throw new Error(`/dev/token answered ${response.status}`);
      const text = await response.text();
      let token = text.trim();
      try {
        token = JSON.parse(text).token ?? token;
      } catch {
        // Plain-text token.
      }
      const payload = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
      cached = { token, exp: payload.exp };
      return token;
    }
  };
}

async function signIn(user) {
  $("login-error").hidden = true;
  const client = new HeraldClient(wsUrl, { getToken: tokenSource(user), backoffMaxMs: 5000 });
  inbox.client = client;
  inbox.user = user;
  wireEvents(client);
  try {
    await client.connect();
  } catch (err) {
    showLoginError(`Could not connect: ${client.closeReason || err.message}`);
    return;
  }
  localStorage.setItem("herald-demo-user", user);
  $("login").hidden = true;
  $("session").hidden = false;
  $("welcome").hidden = false;
  $("who").textContent = user;
  $("welcome-user").textContent = user;
  $("send-hint").textContent =
    `herald send --user ${user} --type COURSE_NEW_CONTENT \\\n  --title "New lesson" --message "Lesson 7 is out"`;
  await resetList();
}

function signOut() {
  inbox.client?.close();
  inbox.client = null;
  inbox.items.clear();
  $("list").replaceChildren();
  closeDropdown();
  $("prefs").hidden = true;
  $("session").hidden = true;
  $("welcome").hidden = true;
  $("login").hidden = false;
  localStorage.removeItem("herald-demo-user");
}

function showLoginError(text) {
  signOut();
  $("login-error").textContent = text;
  $("login-error").hidden = false;
}

// ------------------------------------------------------------------------------------------- events

function wireEvents(client) {
  client.on("unread", ({ count }) => renderBadge(count));
  let sessions = 0;
  client.on("connected", () => {
    // After a reconnect, reads and deletes made elsewhere meanwhile are only visible in a fresh list.
    if (sessions++ > 0) resetList();
  });
  client.on("state", ({ state }) => {
    $("status").dataset.state = state;
    $("status").title = `connection: ${state}`;
  });
  client.on("notification:new", (item, { replayed }) => {
    if (inbox.filter === "unread" && item.read_at) return;
    upsert(item);
    if (!replayed) toast(item);
  });
  client.on("notification:read", ({ ids, all }) => {
    const now = new Date().toISOString();
    for (const item of all ? inbox.items.values() : pick(ids)) item.read_at ??= now;
    if (inbox.filter === "unread") for (const item of [...inbox.items.values()]) if (item.read_at) remove(item.id);
    renderList();
  });
  client.on("notification:unread", ({ ids }) => {
    for (const item of pick(ids)) item.read_at = null;
    renderList();
  });
  client.on("notification:deleted", ({ ids }) => ids.forEach(remove));
  client.on("preferences:updated", (prefs) => {
    inbox.preferences = prefs;
    if (!$("prefs").hidden) renderPreferences();
  });
  client.on("closed", ({ reason }) => {
    if (inbox.client === client && reason !== "closed by the client") showLoginError(`Disconnected: ${reason}`);
  });
}

function pick(ids = []) {
  return ids.map((id) => inbox.items.get(String(id))).filter(Boolean);
}

// -------------------------------------------------------------------------------------- the list

async function resetList() {
  inbox.items.clear();
  inbox.cursor = null;
  inbox.exhausted = false;
  renderList();
  await loadMore();
}

async function loadMore() {
  if (inbox.loading || inbox.exhausted || !inbox.client) return;
  const client = inbox.client;
  inbox.loading = (async () => {
    try {
      const params = { limit: PAGE_SIZE, unread_only: inbox.filter === "unread" };
      if (inbox.cursor !== null) params.before = inbox.cursor;
      const page = await client.list(params);
      if (client !== inbox.client) return;
      for (const item of page.items) if (!inbox.items.has(item.id)) inbox.items.set(item.id, item);
      inbox.cursor = page.next_cursor;
      inbox.exhausted = page.next_cursor === null;
    } catch (err) {
      toastError(err);
    } finally {
      inbox.loading = null;
      renderList();
    }
  })();
  await inbox.loading;
  maybeLoadMore();
}

function upsert(item) {
  inbox.items.set(item.id, { ...inbox.items.get(item.id), ...item });
  renderList();
}

function remove(id) {
  inbox.items.delete(String(id));
  renderList();
}

function sortKey(item) {
  return Date.parse(item.created_at) || 0;
}

function renderList() {
  const items = [...inbox.items.values()].sort((a, b) => sortKey(b) - sortKey(a) || (b.seq ?? 0) - (a.seq ?? 0));
  $("list").replaceChildren(...items.map(renderItem));
  const foot = $("list-foot");
  if (inbox.loading) foot.textContent = "Loading…";
  else if (!items.length) foot.textContent = inbox.filter === "unread" ? "You're all caught up ✨" : "No notifications yet";
  else foot.textContent = inbox.exhausted ? "That's everything" : "";
}

function renderItem(item) {
  const li = element("li", { class: `item${item.read_at ? "" : " unread"}`, "data-id": item.id, "data-type": item.type });
  const icon = categoryIcon(item.category);
  const body = element(
    "div",
    { class: "item-body" },
    element("div", { class: "item-title" }, item.title),
    element("div", { class: "item-message" }, item.message),
    element("div", { class: "item-meta" }, `${humanize(item.type)} · ${timeAgo(item.created_at)}`),
  );
  const toggle = element(
    "button",
    { class: "item-action toggle", title: item.read_at ? "Mark as unread" : "Mark as read" },
    svg(item.read_at ? ICONS.dot : ICONS.check),
  );
  toggle.addEventListener("click", (event) => {
    event.stopPropagation();
    act(item.read_at ? inbox.client.markUnread([item.id]) : inbox.client.markRead([item.id]));
  });
  const del = element("button", { class: "item-action delete", title: "Delete" }, svg(ICONS.trash));
  del.addEventListener("click", (event) => {
    event.stopPropagation();
    act(inbox.client.delete([item.id]));
  });
  li.addEventListener("click", () => {
    if (!item.read_at) act(inbox.client.markRead([item.id]));
  });
  li.append(icon, body, element("div", { class: "item-actions" }, toggle, del));
  return li;
}

async function act(promise) {
  // The server's notification:* frames update every tab, this one included; only errors matter here.
  try {
    await promise;
  } catch (err) {
    toastError(err);
  }
}

function renderBadge(count) {
  const badge = $("badge");
  badge.hidden = !count;
  badge.textContent = count > 99 ? "99+" : String(count ?? 0);
  document.title = count ? `(${count}) Herald · demo inbox` : "Herald · demo inbox";
}

function openDropdown() {
  $("dropdown").hidden = false;
  $("bell").setAttribute("aria-expanded", "true");
  maybeLoadMore();
}

// Infinite scroll: near the bottom of the open dropdown (or when the list does not fill it yet), load the
// next page; called on scroll, on open and after every page.
function maybeLoadMore() {
  const scroller = $("scroller");
  if ($("dropdown").hidden || inbox.exhausted || inbox.loading) return;
  if (scroller.scrollTop + scroller.clientHeight >= scroller.scrollHeight - 120) loadMore();
}

function closeDropdown() {
  $("dropdown").hidden = true;
  $("bell").setAttribute("aria-expanded", "false");
}

// ------------------------------------------------------------------------------------- preferences

async function openPreferences() {
  $("prefs").hidden = false;
  try {
    inbox.preferences = await inbox.client.preferences.get();
    renderPreferences();
  } catch (err) {
    toastError(err);
  }
}

function renderPreferences() {
  const prefs = inbox.preferences;
  if (!prefs) return;
  const master = element("tr", { class: "master" }, element("th", {}, "All notifications"));
  for (const channel of CHANNELS) {
    master.append(element("td", {}, checkbox(prefs.channels[channel], `channels.${channel}`, { channels: { [channel]: null } })));
  }
  const typeRow = (type) => {
    const row = element("tr", { "data-type": type }, element("th", {}, humanize(type)));
    for (const channel of CHANNELS) {
      const box = checkbox(prefs.types[type][channel], `types.${type}.${channel}`, { types: { [type]: { [channel]: null } } });
      box.disabled = !prefs.channels[channel];
      row.append(element("td", {}, box));
    }
    return row;
  };
  const listed = new Set(Object.values(CATEGORIES).flat());
  const groups = { ...CATEGORIES, Other: Object.keys(prefs.types).filter((type) => !listed.has(type)) };
  const rows = [];
  for (const [title, types] of Object.entries(groups)) {
    const present = types.filter((type) => type in prefs.types);
    if (!present.length) continue;
    rows.push(element("tr", { class: "group" }, element("th", { colspan: "4" }, title)), ...present.map(typeRow));
  }
  $("prefs-grid").tBodies[0].replaceChildren(master, ...rows);

  const quiet = prefs.quiet_hours;
  $("quiet-on").checked = Boolean(quiet);
  if (quiet) {
    $("quiet-start").value = quiet.start;
    $("quiet-end").value = quiet.end;
    $("quiet-tz").value = quiet.timezone;
  } else if (!$("quiet-tz").value) {
    $("quiet-tz").value = Intl.DateTimeFormat().resolvedOptions().timeZone;
  }
  $("prefs-updated").textContent = prefs.updated_at ? `Saved ${timeAgo(prefs.updated_at)}` : "Defaults";
}

// A checkbox bound to one boolean of the document; `template` is the patch with null where the value goes.
function checkbox(checked, name, template) {
  const box = element("input", { type: "checkbox", name, "aria-label": name });
  box.checked = Boolean(checked);
  box.addEventListener("change", () => {
    const patch = JSON.parse(JSON.stringify(template), (_, value) => (value === null ? box.checked : value));
    updatePreferences(patch).catch(() => {
      box.checked = !box.checked;
    });
  });
  return box;
}

async function updatePreferences(patch) {
  try {
    inbox.preferences = await inbox.client.preferences.update(patch);
    renderPreferences();
  } catch (err) {
    toastError(err);
    throw err;
  }
}

async function saveQuietHours() {
  const quiet = $("quiet-on").checked
    ? { start: $("quiet-start").value, end: $("quiet-end").value, timezone: $("quiet-tz").value.trim() }
    : null;
  await updatePreferences({ quiet_hours: quiet }).catch(() => {});
}

async function resetPreferences() {
  try {
    inbox.preferences = await inbox.client.preferences.reset();
    renderPreferences();
  } catch (err) {
    toastError(err);
  }
}

// ------------------------------------------------------------------------------------------- toasts

function toast(item) {
  const node = element(
    "div",
    { class: "toast", role: "status", "data-id": item.id },
    categoryIcon(item.category),
    element("div", {}, element("strong", {}, item.title), element("p", {}, item.message)),
  );
  node.addEventListener("click", () => {
    openDropdown();
    node.remove();
  });
  showToast(node);
}

function toastError(err) {
  const text =
    err instanceof HeraldRequestError ? `${err.serverMessage}${err.data ? ` (${JSON.stringify(err.data)})` : ""}` : err.message;
  showToast(element("div", { class: "toast error", role: "alert" }, element("div", {}, element("strong", {}, "Something went wrong"), element("p", {}, text))));
}

function showToast(node) {
  const box = $("toasts");
  box.append(node);
  while (box.children.length > 4) box.firstElementChild.remove();
  setTimeout(() => {
    node.classList.add("leaving");
    setTimeout(() => node.remove(), 300);
  }, TOAST_MS);
}

// ------------------------------------------------------------------------------------------- helpers

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  node.append(...children);
  return node;
}

function svg(path) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  node.setAttribute("viewBox", "0 0 24 24");
  node.setAttribute("aria-hidden", "true");
  const shape = document.createElementNS("http://www.w3.org/2000/svg", "path");
  shape.setAttribute("d", path);
  node.append(shape);
  return node;
}

function categoryIcon(category) {
  const known = category in ICONS && !["check", "dot", "trash"].includes(category);
  return element("span", { class: `item-icon cat-${known ? category : "other"}`, title: category }, svg(ICONS[known ? category : "other"]));
}

function humanize(type) {
  const words = type.toLowerCase().split("_");
  return [words[0][0].toUpperCase() + words[0].slice(1), ...words.slice(1)].join(" ");
}

function timeAgo(iso) {
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 45) return "just now";
  const units = [
    [60, "minute"],
    [24, "hour"],
    [7, "day"],
    [Infinity, "week"],
  ];
  let value = seconds / 60;
  for (const [size, unit] of units) {
    if (value < size) return new Intl.RelativeTimeFormat("en", { numeric: "auto" }).format(-Math.round(value), unit);
    value /= size;
  }
  return iso;
}

// ------------------------------------------------------------------------------------------- wiring

$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  signIn($("user-input").value.trim());
});
$("logout").addEventListener("click", signOut);
$("bell").addEventListener("click", (event) => {
  event.stopPropagation();
  if ($("dropdown").hidden) openDropdown();
  else closeDropdown();
});
$("dropdown").addEventListener("click", (event) => event.stopPropagation());
document.addEventListener("click", closeDropdown);
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape") {
    closeDropdown();
    $("prefs").hidden = true;
  }
});
$("mark-all").addEventListener("click", () => act(inbox.client.markAllRead()));
for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => {
    document.querySelectorAll(".tab").forEach((other) => other.classList.toggle("active", other === tab));
    inbox.filter = tab.dataset.filter;
    resetList();
  });
}
$("prefs-button").addEventListener("click", openPreferences);
$("prefs-close").addEventListener("click", () => {
  $("prefs").hidden = true;
});
$("quiet-save").addEventListener("click", saveQuietHours);
$("prefs-reset").addEventListener("click", resetPreferences);
if (Intl.supportedValuesOf) {
  $("tz-list").replaceChildren(...Intl.supportedValuesOf("timeZone").map((zone) => element("option", { value: zone })));
}

$("scroller").addEventListener("scroll", maybeLoadMore, { passive: true });

const initialUser = new URLSearchParams(location.search).get("user") ?? localStorage.getItem("herald-demo-user");
if (initialUser) {
  $("user-input").value = initialUser;
  signIn(initialUser);
}
