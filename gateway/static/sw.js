/* Herald's service worker for the demo inbox, served at /sw.js (scope: the whole origin).
 *
 * push: the payload is herald-delivery's JSON {id, type, category, title, message, data, url, created_at};
 * it is shown as a notification tagged with the notification id (a repeat replaces, never stacks).
 * notificationclick: shows the notification's URL (its url, else the older data.url; http(s) only, else
 * the inbox):
 *   1. a window already at that URL is focused;
 *   2. else, for a URL of this origin, a window this worker controls (the inbox) is focused and navigated
 *      there: navigating a controlled window needs no user activation, so it works even when the browser
 *      refuses the focus;
 *   3. else (another origin, or no window open) a new window is opened. Browsers allow that only with the
 *      click's user activation, which a real click on the notification gives.
 */
"use strict";

function targetUrl(data) {
  const raw = data && typeof data.url === "string" ? data.url : "/";
  try {
    const url = new URL(raw, self.location.origin);
    return url.protocol === "https:" || url.protocol === "http:" ? url.href : self.location.origin + "/";
  } catch {
    return self.location.origin + "/";
  }
}

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

self.addEventListener("push", (event) => {
  let payload = {};
  try {
    payload = event.data ? event.data.json() : {};
  } catch {
    payload = { title: event.data ? event.data.text() : "" };
  }
  const title = typeof payload.title === "string" && payload.title ? payload.title : "New notification";
  event.waitUntil(
    self.registration.showNotification(title, {
      body: typeof payload.message === "string" ? payload.message : "",
      tag: typeof payload.id === "string" ? payload.id : undefined,
      data: {
        id: payload.id,
        type: payload.type,
        url: targetUrl(typeof payload.url === "string" ? payload : payload.data),
      },
    }),
  );
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const target = targetUrl(event.notification.data);
  event.waitUntil(
    (async () => {
      const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
      const showing = windows.find((client) => client.url === target);
      if (showing) return showing.focus();
      const controlled = await self.clients.matchAll({ type: "window" });
      if (controlled.length && new URL(target).origin === self.location.origin) {
        const inbox = controlled[0]; // the most recently focused one first
        // Focus first, while the click's activation lasts; a refused focus must not stop the navigation.
        await inbox.focus().catch(() => undefined);
        return inbox.navigate(target);
      }
      return self.clients.openWindow(target);
    })(),
  );
});
