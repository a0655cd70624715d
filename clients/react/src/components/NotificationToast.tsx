import type { Notification } from "@herald/client";
import { useCallback, useEffect, useRef, useState } from "react";
import type { ReactNode } from "react";

import { useHeraldContext, useStrings } from "../context";
import { CategoryIcon, Icon } from "../icons";
import type { HeraldStrings } from "../strings";

export interface NotificationToastProps {
  /** How long a toast stays, in ms (default 6000; 0 = until dismissed). */
  duration?: number;
  /** At most this many at once; the oldest goes first (default 3). */
  max?: number;
  /** Replaces the inside of a toast. */
  render?: (item: Notification, dismiss: () => void) => ReactNode;
  /** A click on a toast (default: nothing but dismissing it). */
  onOpen?: (item: Notification) => void;
  /** Which live notifications get a toast (default all). */
  filter?: (item: Notification) => boolean;
  strings?: Partial<HeraldStrings>;
  className?: string;
}

/**
 * Toasts for notifications that arrive live (not the ones a reconnect recovers), in a polite live
 * region: screen readers announce them without interrupting.
 */
export function NotificationToast({
  duration = 6000,
  max = 3,
  render,
  onOpen,
  filter,
  strings: overrides,
  className,
}: NotificationToastProps) {
  const strings = useStrings(overrides);
  const { client, theme } = useHeraldContext();
  const [toasts, setToasts] = useState<Notification[]>([]);
  const timers = useRef(new Map<string, ReturnType<typeof setTimeout>>());
  const filterRef = useRef(filter);
  filterRef.current = filter;

  const dismiss = useCallback((id: string) => {
    clearTimeout(timers.current.get(id));
    timers.current.delete(id);
    setToasts((current) => current.filter((n) => n.id !== id));
  }, []);

  useEffect(() => {
    if (!client) return undefined;
    return client.on("notification:new", (item, meta) => {
      if (meta.replayed || (filterRef.current && !filterRef.current(item))) return;
      setToasts((current) => [...current.filter((n) => n.id !== item.id), item].slice(-max));
      if (duration > 0) {
        clearTimeout(timers.current.get(item.id));
        timers.current.set(
          item.id,
          setTimeout(() => dismiss(item.id), duration),
        );
      }
    });
  }, [client, duration, max, dismiss]);

  useEffect(() => {
    const pending = timers.current;
    return () => pending.forEach((timer) => clearTimeout(timer));
  }, []);

  return (
    <div
      className={`herald herald-toasts${className ? ` ${className}` : ""}`}
      data-herald-theme={theme}
      role="region"
      aria-label={strings.toastRegion}
    >
      <div aria-live="polite" aria-relevant="additions" className="herald-toast-stack">
        {toasts.map((item) => (
          <div key={item.id} className="herald-toast" data-id={item.id}>
            {render ? (
              render(item, () => dismiss(item.id))
            ) : (
              <>
                <CategoryIcon category={item.category} />
                <button
                  type="button"
                  className="herald-toast-body"
                  onClick={() => {
                    onOpen?.(item);
                    dismiss(item.id);
                  }}
                >
                  <strong className="herald-toast-title">{item.title}</strong>
                  <span className="herald-toast-message">{item.message}</span>
                </button>
                <button type="button" className="herald-tool" aria-label={strings.dismiss} title={strings.dismiss} onClick={() => dismiss(item.id)}>
                  <Icon name="close" />
                </button>
              </>
            )}
          </div>
        ))}
      </div>
    </div>
  );
}
