// The hooks over the provider's client; components use these, and the package exports them.
export { useNotifications, useUnreadCount } from "./notifications";
export type { InboxFilter, UnreadCount, UseNotifications, UseNotificationsOptions } from "./notifications";
export { usePreferences } from "./preferences";
export type { UsePreferences } from "./preferences";
export { usePush } from "./push";
export type { PushStatus, UsePush, UsePushOptions } from "./push";
