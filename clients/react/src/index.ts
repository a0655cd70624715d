// @herald/react: React bindings and components for Herald. Nothing here touches `window` at import
// time, so it renders on the server; the client is created when <HeraldProvider> mounts.
export { HeraldProvider, useHerald, useHeraldContext, useStrings } from "./context";
export type { HeraldContextValue, HeraldProviderProps, HeraldTheme, UseHerald } from "./context";
export { useNotifications, usePreferences, usePush, useUnreadCount } from "./hooks";
export type {
  InboxFilter,
  PushStatus,
  UnreadCount,
  UseNotifications,
  UseNotificationsOptions,
  UsePreferences,
  UsePush,
  UsePushOptions,
} from "./hooks";
export { NotificationBell } from "./components/NotificationBell";
export type { NotificationBellProps } from "./components/NotificationBell";
export { NotificationDropdown } from "./components/NotificationDropdown";
export type { ItemHelpers, NotificationDropdownProps } from "./components/NotificationDropdown";
export { NotificationToast } from "./components/NotificationToast";
export type { NotificationToastProps } from "./components/NotificationToast";
export { DEFAULT_CATEGORIES, PreferencesPanel } from "./components/PreferencesPanel";
export type { PreferencesPanelProps } from "./components/PreferencesPanel";
export { defaultStrings, humanize } from "./strings";
export type { HeraldStrings } from "./strings";
export { relativeTime } from "./time";
