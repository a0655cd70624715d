// Every word the components show. Pass a partial object as <HeraldProvider strings={...}> (or a
// component's `strings` prop) to translate or reword; functions take the values they interpolate.

export interface HeraldStrings {
  bellLabel: (unread: number) => string;
  inboxTitle: string;
  tabAll: string;
  tabUnread: string;
  tabArchived: string;
  markAllRead: string;
  markRead: string;
  markUnread: string;
  archive: string;
  unarchive: string;
  delete: string;
  loading: string;
  loadMore: string;
  end: string;
  emptyAll: string;
  emptyUnread: string;
  emptyArchived: string;
  loadError: string;
  retry: string;
  actionError: string;
  dismiss: string;
  toastRegion: string;
  justNow: string;
  unread: string;
  /** A notification type as shown to people; default: "COURSE_NEW_CONTENT" → "Course new content". */
  typeLabel: (type: string) => string;
  categoryLabel: (category: string) => string;
  preferencesTitle: string;
  channelLabel: (channel: string) => string;
  typeColumn: string;
  allNotifications: string;
  locked: string;
  quietHours: string;
  quietHoursHint: string;
  quietEnabled: string;
  quietFrom: string;
  quietTo: string;
  timeZone: string;
  /** Under the picker while the saved quiet hours have no time zone (the profile's applies, else UTC). */
  quietZoneUnsaved: string;
  save: string;
  saved: string;
  saving: string;
  resetDefaults: string;
  defaults: string;
  pushTitle: string;
  pushEnable: string;
  pushDisable: string;
  pushOn: string;
  pushUnsupported: string;
  pushDenied: string;
  connection: (state: string) => string;
}

const CATEGORY_NAMES: Record<string, string> = {
  course: "Course",
  assessment: "Assessment",
  progress: "Progress",
  social: "Social",
  system: "System",
  other: "Other",
};

const CHANNEL_NAMES: Record<string, string> = { in_app: "In-app", email: "Email", push: "Push" };

export function humanize(type: string): string {
  const text = type.toLowerCase().replace(/_/g, " ");
  return text.charAt(0).toUpperCase() + text.slice(1);
}

export const defaultStrings: HeraldStrings = {
  bellLabel: (unread) => (unread ? `Notifications, ${unread} unread` : "Notifications"),
  inboxTitle: "Notifications",
  tabAll: "All",
  tabUnread: "Unread",
  tabArchived: "Archived",
  markAllRead: "Mark all read",
  markRead: "Mark as read",
  markUnread: "Mark as unread",
  archive: "Archive",
  unarchive: "Move to inbox",
  delete: "Delete",
  loading: "Loading…",
  loadMore: "Load more",
  end: "That's everything",
  emptyAll: "No notifications yet",
  emptyUnread: "You're all caught up",
  emptyArchived: "Nothing archived",
  loadError: "Couldn't load notifications.",
  retry: "Try again",
  actionError: "That didn't work; nothing was changed.",
  dismiss: "Dismiss",
  toastRegion: "New notifications",
  justNow: "just now",
  unread: "Unread",
  typeLabel: humanize,
  categoryLabel: (category) => CATEGORY_NAMES[category] ?? humanize(category),
  preferencesTitle: "Notification preferences",
  channelLabel: (channel) => CHANNEL_NAMES[channel] ?? humanize(channel),
  typeColumn: "Type",
  allNotifications: "All notifications",
  locked: "Always on for security",
  quietHours: "Quiet hours",
  quietHoursHint: "Email and push wait until quiet hours end; in-app is never held.",
  quietEnabled: "Enabled",
  quietFrom: "From",
  quietTo: "To",
  timeZone: "Time zone",
  quietZoneUnsaved: "No time zone is saved yet, so your profile's applies (else UTC). Saving stores the one shown.",
  save: "Save quiet hours",
  saved: "Saved",
  saving: "Saving…",
  resetDefaults: "Reset to defaults",
  defaults: "Defaults",
  pushTitle: "Push on this device",
  pushEnable: "Enable push",
  pushDisable: "Disable push",
  pushOn: "Push is on for this browser.",
  pushUnsupported: "This browser cannot receive push notifications.",
  pushDenied: "Notifications are blocked for this site in the browser's settings.",
  connection: (state) => `Connection: ${state}`,
};
