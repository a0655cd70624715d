import type { Notification } from "@herald/client";
import { useCallback, useEffect, useId, useMemo, useRef, useState } from "react";
import type { KeyboardEvent, ReactNode } from "react";

import { useHeraldContext, useStrings } from "../context";
import { useNotifications } from "../hooks";
import type { InboxFilter, UseNotifications } from "../hooks";
import { CategoryIcon, Icon } from "../icons";
import { useFocusKept } from "./focus";
import type { HeraldStrings } from "../strings";
import { relativeTime, useNow } from "../time";

export interface ItemHelpers {
  strings: HeraldStrings;
  /** The relative time of the item ("5 minutes ago"), in the provider's locale. */
  time: string;
  markRead: () => void;
  markUnread: () => void;
  archive: () => void;
  unarchive: () => void;
  remove: () => void;
  act: (actionId: string) => void;
}

export interface NotificationDropdownProps {
  /** Which tabs to show, in order (default all three). */
  tabs?: InboxFilter[];
  initialTab?: InboxFilter;
  pageSize?: number;
  types?: string[];
  categories?: string[];
  /** Replaces the inside of each item (the item element, its focus and keyboard handling stay). */
  renderItem?: (item: Notification, helpers: ItemHelpers) => ReactNode;
  /** Shown instead of the built-in empty text. */
  renderEmpty?: (filter: InboxFilter) => ReactNode;
  /** A click or Enter on an item; default: mark it read and follow its `url`, if any. */
  onItemClick?: (item: Notification, helpers: ItemHelpers) => void;
  /** Escape was pressed (the bell closes the dropdown and takes the focus back). */
  onClose?: () => void;
  /** Move the focus into the dropdown when it mounts (the bell sets this). */
  autoFocus?: boolean;
  strings?: Partial<HeraldStrings>;
  className?: string;
  id?: string;
}

const TAB_STRING: Record<InboxFilter, keyof HeraldStrings> = { all: "tabAll", unread: "tabUnread", archived: "tabArchived" };
const EMPTY_STRING: Record<InboxFilter, keyof HeraldStrings> = { all: "emptyAll", unread: "emptyUnread", archived: "emptyArchived" };
const NEAR_BOTTOM_PX = 120;

function follow(url: string | null | undefined) {
  if (url && typeof window !== "undefined") window.location.assign(url);
}

/** The inbox: tabs (All / Unread / Archived), an infinitely scrolling feed, per-item and bulk actions. */
export function NotificationDropdown({
  tabs = ["all", "unread", "archived"],
  initialTab,
  pageSize,
  types,
  categories,
  renderItem,
  renderEmpty,
  onItemClick,
  onClose,
  autoFocus = false,
  strings: overrides,
  className,
  id,
}: NotificationDropdownProps) {
  const strings = useStrings(overrides);
  const { locale, theme } = useHeraldContext();
  const [filter, setFilter] = useState<InboxFilter>(initialTab ?? tabs[0] ?? "all");
  const inbox = useNotifications({ filter, pageSize, types, categories });
  const { items, loading, error, hasMore, loadMore } = inbox;
  const [failure, setFailure] = useState<string | null>(null);
  const [focusIndex, setFocusIndex] = useState(0);
  const now = useNow();
  const base = useId();
  const titleId = `${base}-title`;
  const panelId = `${base}-panel`;
  const scroller = useRef<HTMLDivElement>(null);
  const tabRefs = useRef<(HTMLButtonElement | null)[]>([]);
  const itemRefs = useRef<(HTMLElement | null)[]>([]);

  useEffect(() => {
    if (autoFocus) tabRefs.current[tabs.indexOf(filter)]?.focus();
    // Only on mount.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, []);

  useEffect(() => {
    if (focusIndex >= items.length && items.length) setFocusIndex(items.length - 1);
  }, [items.length, focusIndex]);

  // Infinite scroll: near the bottom, or while the first pages do not fill the scroller yet.
  const maybeLoadMore = useCallback(() => {
    const box = scroller.current;
    if (!box || !hasMore || loading || error || box.clientHeight === 0) return;
    if (box.scrollTop + box.clientHeight >= box.scrollHeight - NEAR_BOTTOM_PX) void loadMore();
  }, [hasMore, loading, error, loadMore]);
  useEffect(() => {
    maybeLoadMore();
  }, [items.length, maybeLoadMore]);

  const attempt = useCallback(
    (work: Promise<void>) => {
      setFailure(null);
      work.catch(() => setFailure(strings.actionError));
    },
    [strings.actionError],
  );

  const helpersFor = (item: Notification): ItemHelpers => ({
    strings,
    time: relativeTime(item.created_at, now, locale, strings.justNow),
    markRead: () => attempt(inbox.markRead([item.id])),
    markUnread: () => attempt(inbox.markUnread([item.id])),
    archive: () => attempt(inbox.archive([item.id])),
    unarchive: () => attempt(inbox.unarchive([item.id])),
    remove: () => attempt(inbox.remove([item.id])),
    act: (actionId) => {
      attempt(inbox.act(item.id, actionId));
      follow(item.actions?.find((a) => a.id === actionId)?.url);
    },
  });

  const open = (item: Notification, helpers: ItemHelpers) => {
    if (onItemClick) return onItemClick(item, helpers);
    if (!item.read_at) helpers.markRead();
    follow(item.url);
    return undefined;
  };

  const focusItem = (index: number) => {
    const target = Math.max(0, Math.min(index, items.length - 1));
    setFocusIndex(target);
    itemRefs.current[target]?.focus();
  };

  const kept = useFocusKept(
    useMemo(() => items.map((n) => n.id), [items]),
    () => (items.length ? focusItem(focusIndex) : tabRefs.current[tabs.indexOf(filter)]?.focus()),
  );

  const onTabKey = (event: KeyboardEvent<HTMLButtonElement>, index: number) => {
    const moves: Record<string, number> = { ArrowRight: index + 1, ArrowLeft: index - 1, Home: 0, End: tabs.length - 1 };
    if (event.key in moves) {
      event.preventDefault();
      const next = (moves[event.key] + tabs.length) % tabs.length;
      setFilter(tabs[next]);
      tabRefs.current[next]?.focus();
    } else if (event.key === "ArrowDown" && items.length) {
      event.preventDefault();
      focusItem(focusIndex);
    }
  };

  const onFeedKey = (event: KeyboardEvent<HTMLElement>, index: number, item: Notification) => {
    if (event.target !== event.currentTarget) return; // keys on the item's own buttons
    const moves: Record<string, number> = {
      ArrowDown: index + 1,
      ArrowUp: index - 1,
      PageDown: index + 5,
      PageUp: index - 5,
      Home: 0,
      End: items.length - 1,
    };
    if (event.key in moves) {
      event.preventDefault();
      if (event.key === "ArrowUp" && index === 0) {
        tabRefs.current[tabs.indexOf(filter)]?.focus();
        return;
      }
      if ((event.key === "ArrowDown" || event.key === "End") && index >= items.length - 1 && hasMore) void loadMore();
      focusItem(moves[event.key]);
    } else if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      open(item, helpersFor(item));
    }
  };

  const onKeyDown = (event: KeyboardEvent<HTMLElement>) => {
    if (event.key === "Escape" && onClose) {
      event.stopPropagation();
      onClose();
    }
  };

  const unreadShown = items.some((n) => !n.read_at);
  let foot: ReactNode;
  if (error && !loading) {
    foot = (
      <div className="herald-error" role="alert">
        <span>{strings.loadError}</span>{" "}
        <button type="button" className="herald-link" onClick={() => void inbox.refresh()}>
          {strings.retry}
        </button>
      </div>
    );
  } else if (loading) {
    foot = strings.loading;
  } else if (!items.length) {
    foot = renderEmpty ? renderEmpty(filter) : <span className="herald-empty">{strings[EMPTY_STRING[filter]] as string}</span>;
  } else if (!hasMore) {
    foot = strings.end;
  } else {
    foot = (
      <button type="button" className="herald-link" onClick={() => void loadMore()}>
        {strings.loadMore}
      </button>
    );
  }

  return (
    <section
      id={id}
      className={`herald herald-dropdown${className ? ` ${className}` : ""}`}
      data-herald-theme={theme}
      role="dialog"
      aria-labelledby={titleId}
      onKeyDown={onKeyDown}
    >
      <header className="herald-dropdown-head">
        <h2 id={titleId} className="herald-dropdown-title">
          {strings.inboxTitle}
        </h2>
        {filter !== "archived" && (
          <button
            type="button"
            className="herald-link herald-mark-all"
            disabled={!unreadShown}
            onClick={() => attempt(inbox.markAllRead())}
          >
            {strings.markAllRead}
          </button>
        )}
      </header>
      <div className="herald-tabs" role="tablist" aria-label={strings.inboxTitle}>
        {tabs.map((tab, index) => (
          <button
            key={tab}
            ref={(node) => {
              tabRefs.current[index] = node;
            }}
            type="button"
            role="tab"
            id={`${base}-tab-${tab}`}
            className="herald-tab"
            data-filter={tab}
            aria-selected={tab === filter}
            aria-controls={panelId}
            tabIndex={tab === filter ? 0 : -1}
            onClick={() => setFilter(tab)}
            onKeyDown={(event) => onTabKey(event, index)}
          >
            {strings[TAB_STRING[tab]] as string}
          </button>
        ))}
      </div>
      {failure && (
        <p className="herald-error herald-action-error" role="alert">
          {failure}
        </p>
      )}
      <div
        ref={scroller}
        id={panelId}
        className="herald-scroller"
        role="tabpanel"
        aria-labelledby={`${base}-tab-${filter}`}
        onScroll={maybeLoadMore}
      >
        <div className="herald-feed" role="feed" aria-busy={loading} aria-labelledby={titleId}>
          {items.map((item, index) => {
            const helpers = helpersFor(item);
            const itemTitle = `${base}-${item.id}-t`;
            const itemBody = `${base}-${item.id}-m`;
            return (
              <article
                key={item.id}
                ref={(node) => {
                  itemRefs.current[index] = node;
                }}
                className={`herald-item${item.read_at ? "" : " herald-unread"}`}
                data-id={item.id}
                data-type={item.type}
                tabIndex={index === focusIndex ? 0 : -1}
                aria-posinset={index + 1}
                aria-setsize={hasMore ? -1 : items.length}
                aria-labelledby={itemTitle}
                aria-describedby={itemBody}
                onFocus={() => {
                  kept.focused(item.id);
                  setFocusIndex(index);
                }}
                onBlur={kept.blurred}
                onClick={() => open(item, helpers)}
                onKeyDown={(event) => onFeedKey(event, index, item)}
              >
                {renderItem ? (
                  renderItem(item, helpers)
                ) : (
                  <DefaultItem item={item} helpers={helpers} titleId={itemTitle} bodyId={itemBody} archived={filter === "archived"} />
                )}
              </article>
            );
          })}
        </div>
        <div className="herald-foot">{foot}</div>
      </div>
    </section>
  );
}

function DefaultItem({
  item,
  helpers,
  titleId,
  bodyId,
  archived,
}: {
  item: Notification;
  helpers: ItemHelpers;
  titleId: string;
  bodyId: string;
  archived: boolean;
}) {
  const { strings } = helpers;
  const stop = (fn: () => void) => (event: { stopPropagation: () => void }) => {
    event.stopPropagation();
    fn();
  };
  const isArchived = archived || Boolean(item.archived_at);
  return (
    <>
      <CategoryIcon category={item.category} />
      <div className="herald-item-body">
        <p className="herald-item-title" id={titleId}>
          {!item.read_at && <span className="herald-sr-only">{strings.unread}: </span>}
          {item.title}
          {typeof item.count === "number" && item.count > 1 && <span className="herald-count"> ×{item.count}</span>}
        </p>
        <p className="herald-item-message" id={bodyId}>
          {item.message}
        </p>
        <p className="herald-item-meta">
          {strings.typeLabel(item.type)} · <time dateTime={item.created_at}>{helpers.time}</time>
        </p>
        {item.actions?.length ? (
          <div className="herald-item-cta">
            {item.actions.map((action) => (
              <button
                key={action.id}
                type="button"
                className={`herald-button${item.action_id === action.id ? " herald-chosen" : ""}`}
                aria-pressed={item.action_id === action.id}
                onClick={stop(() => helpers.act(action.id))}
              >
                {action.label}
              </button>
            ))}
          </div>
        ) : null}
      </div>
      <div className="herald-item-tools">
        <button
          type="button"
          className="herald-tool herald-toggle"
          aria-label={item.read_at ? strings.markUnread : strings.markRead}
          title={item.read_at ? strings.markUnread : strings.markRead}
          onClick={stop(item.read_at ? helpers.markUnread : helpers.markRead)}
        >
          <Icon name={item.read_at ? "dot" : "check"} />
        </button>
        <button
          type="button"
          className="herald-tool herald-archive"
          aria-label={isArchived ? strings.unarchive : strings.archive}
          title={isArchived ? strings.unarchive : strings.archive}
          onClick={stop(isArchived ? helpers.unarchive : helpers.archive)}
        >
          <Icon name={isArchived ? "unarchive" : "archive"} />
        </button>
        <button
          type="button"
          className="herald-tool herald-delete"
          aria-label={strings.delete}
          title={strings.delete}
          onClick={stop(helpers.remove)}
        >
          <Icon name="trash" />
        </button>
      </div>
    </>
  );
}

export type { UseNotifications };
