// @herald/client: Herald's browser client. ES modules, no dependencies, no build step (docs/clients.md).
//
//   import { createHeraldClient } from "@herald/client";      // or "/client/herald.js" from a gateway
//   const herald = createHeraldClient("ws://localhost:8765/notifications", { getToken });
//   herald.on("notification:new", (n) => console.log(n.title));
//   herald.connect();
//
// Two classes with one interface (HeraldApi: requests, helpers, events, counts):
// - HeraldClient holds one WebSocket.
// - SharedHeraldClient shares one HeraldClient between the tabs of a browser: the tabs elect a leader
//   (Web Locks when the browser has them, else heartbeats over BroadcastChannel); only the leader holds a
//   socket, and relays events to the other tabs and their requests to the gateway. When the leader tab
//   closes, another tab takes over and resumes from the last watermark the tabs saw, so nothing is missed.
// createHeraldClient() picks SharedHeraldClient when BroadcastChannel exists, else HeraldClient.
//
// Semantics (shared with the Python client, clients/python/herald_client):
// - Authentication is always the first frame (`auth`); the token never goes in the URL. `getToken()` is
//   called on every (re)connect and again shortly before the token's `exp` to send `auth.refresh`.
// - Several gateway URLs may be given: a connection that fails before `connected`, or that the gateway
//   closes with 1001 (shutting down), moves on to the next URL.
// - Reconnects use exponential backoff with full jitter, reset once a session has stayed open
//   STABLE_SESSION_MS (an HTTP status, or a session closed sooner, is a failed attempt). 4401
//   gets a fresh token and reconnects (two refusals of a fresh token in a row, or getToken() throwing,
//   stop the client); 4008 stops the client; 1001, 1013, network loss and every other close reconnect.
// - Nothing missed, nothing twice: after a reconnect, and on `sync:required`, the client pages
//   `notifications.sync` from its watermark — the highest seq below which nothing can be missing (it
//   advances over contiguous seqs of live frames and to the end of each sync page) — and drops
//   notifications whose id it already delivered (a higher seq of a known id is a collapsed notification's
//   new version; a live broadcast frame, seq null, and its stored copy with a seq are one). A failed catch-up
//   is retried with backoff until it succeeds, the client closes or a newer catch-up takes over.
// - `unreadCount` / `unseenCount` follow `connected`, the `notification:*` frames and request results,
//   ordered by the `last_seq` each count was read with (lib/counts.js, amendments 43 and 51): an older
//   count is dropped, a live frame at or below it is in it already, and the live frames counted above it
//   are added to it again. A
//   broadcast's frame (seq null) and a collapse (count > 1) into an item the client never delivered make
//   it fetch the counts rather than add one (amendments 36, 12). With shared tabs the leader's client takes
//   the counts of every tab's request results.
//
// Events: the server's notification methods (`connected`, `notification:new|read|unread|deleted|seen|
// archived|unarchived|acted`, `preferences:updated`, `sync:required`) and the client's own `unread`
// ({count}), `unseen` ({count}), `state` ({state}), `disconnected` ({code, reason, retryIn}), `closed`
// ({code, reason}) and, for SharedHeraldClient, `role` ({role}). Listeners get (params, meta) where
// meta.replayed is true for notifications that a sync recovered.
//
// Modules: lib/api.js (errors, helpers, HeraldApi), lib/tracking.js (the watermark and delivered versions,
// no I/O), lib/counts.js (counts against live frames, no I/O), lib/client.js (HeraldClient), lib/shared.js (SharedHeraldClient).

import { HeraldClient } from "./lib/client.js";
import { SharedHeraldClient } from "./lib/shared.js";

export { HeraldApi, HeraldConnectionError, HeraldRequestError, backoffDelay, base64UrlToBytes, tokenExpiry } from "./lib/api.js";
export { HeraldClient, SharedHeraldClient };

/**
 * The client a browser app wants: SharedHeraldClient (one socket for all tabs) when BroadcastChannel
 * exists and `options.shareTabs` is not false, else HeraldClient (one socket per tab).
 */
export function createHeraldClient(urls, options = {}) {
  const Channel = "BroadcastChannel" in options ? options.BroadcastChannel : globalThis.BroadcastChannel;
  if (options.shareTabs !== false && typeof Channel === "function") return new SharedHeraldClient(urls, options);
  return new HeraldClient(urls, options);
}
