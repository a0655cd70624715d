import { useEffect, useRef } from "react";
import type { FocusEvent } from "react";

/**
 * Keeps the keyboard focus in a list whose focused item may leave it (read in the Unread tab, deleted,
 * archived): the browser drops the focus to <body>, where the arrows and Escape no longer reach the list.
 * Then `refocus()` is called (to the item now at its place, or the last one, else the selected tab).
 * Returns the focus and blur handlers of an item.
 */
export function useFocusKept(ids: readonly string[], refocus: () => void) {
  const focusedId = useRef<string | null>(null); // the item holding the focus (itself or one of its buttons)

  useEffect(() => {
    const id = focusedId.current;
    if (id === null || ids.includes(id)) return;
    focusedId.current = null;
    const active = document.activeElement;
    if (active && active !== document.body) return; // the focus is somewhere already
    refocus();
    // Only when the items change.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [ids]);

  return {
    focused(id: string) {
      focusedId.current = id;
    },
    blurred(event: FocusEvent<HTMLElement>) {
      // To another element: this item no longer holds the focus. (A removed element's blur, where
      // browsers send one, has no relatedTarget.)
      const next = event.relatedTarget as Node | null;
      if (next && !event.currentTarget.contains(next)) focusedId.current = null;
    },
  };
}
