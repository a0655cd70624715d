import { useCallback, useEffect, useId, useRef, useState } from "react";

import { useHeraldContext, useStrings } from "../context";
import { useUnreadCount } from "../hooks";
import { Icon } from "../icons";
import type { HeraldStrings } from "../strings";
import { NotificationDropdown } from "./NotificationDropdown";
import type { NotificationDropdownProps } from "./NotificationDropdown";

export interface NotificationBellProps {
  /** What the badge counts: "badge" (unseen where the server has it, else unread; default), "unread", "unseen". */
  count?: "badge" | "unread" | "unseen";
  /** Mark everything seen when the dropdown opens (default true). */
  markSeenOnOpen?: boolean;
  /** Badge text above this number is "N+" (default 99). */
  max?: number;
  /** Props of the dropdown it opens (tabs, renderItem, onItemClick, ...). */
  dropdown?: Omit<NotificationDropdownProps, "onClose" | "autoFocus" | "id">;
  /** Controlled open state (optional). */
  open?: boolean;
  onOpenChange?: (open: boolean) => void;
  strings?: Partial<HeraldStrings>;
  className?: string;
}

/** The bell with its badge; opens the NotificationDropdown. Escape or a click outside closes it. */
export function NotificationBell({
  count = "badge",
  markSeenOnOpen = true,
  max = 99,
  dropdown,
  open: controlled,
  onOpenChange,
  strings: overrides,
  className,
}: NotificationBellProps) {
  const strings = useStrings(overrides);
  const { theme } = useHeraldContext();
  const counts = useUnreadCount();
  const [own, setOwn] = useState(false);
  const open = controlled ?? own;
  const wrap = useRef<HTMLDivElement>(null);
  const button = useRef<HTMLButtonElement>(null);
  const dropdownId = `${useId()}-inbox`;
  const shown = count === "unread" ? counts.unread : count === "unseen" ? (counts.unseen ?? 0) : counts.badge;
  const { markAllSeen } = counts;

  const setOpen = useCallback(
    (next: boolean) => {
      if (controlled === undefined) setOwn(next);
      onOpenChange?.(next);
    },
    [controlled, onOpenChange],
  );

  useEffect(() => {
    if (open && markSeenOnOpen) void markAllSeen();
  }, [open, markSeenOnOpen, markAllSeen, counts.unseen]);

  useEffect(() => {
    if (!open) return undefined;
    const outside = (event: MouseEvent) => {
      if (wrap.current && !wrap.current.contains(event.target as Node)) setOpen(false);
    };
    document.addEventListener("mousedown", outside);
    return () => document.removeEventListener("mousedown", outside);
  }, [open, setOpen]);

  const close = useCallback(() => {
    setOpen(false);
    button.current?.focus();
  }, [setOpen]);

  return (
    <div ref={wrap} className={`herald herald-bell-wrap${className ? ` ${className}` : ""}`} data-herald-theme={theme}>
      <button
        ref={button}
        type="button"
        className="herald-bell"
        aria-label={strings.bellLabel(counts.unread)}
        aria-haspopup="dialog"
        aria-expanded={open}
        aria-controls={open ? dropdownId : undefined}
        data-unread={counts.unread}
        data-unseen={counts.unseen ?? undefined}
        onClick={() => setOpen(!open)}
      >
        <Icon name="bell" />
        {shown > 0 && (
          <span className="herald-badge" aria-hidden="true">
            {shown > max ? `${max}+` : shown}
          </span>
        )}
      </button>
      {open && <NotificationDropdown {...dropdown} id={dropdownId} onClose={close} autoFocus />}
    </div>
  );
}
