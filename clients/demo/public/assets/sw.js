// The demo's service worker: shows Herald's Web Push payloads ({id, type, title, message, ...}).
self.addEventListener("push", (event) => {
  const payload = event.data ? event.data.json() : {};
  event.waitUntil(
    self.registration.showNotification(payload.title || "Herald", { body: payload.message || "", tag: payload.id }),
  );
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  event.waitUntil(self.clients.openWindow("/"));
});
