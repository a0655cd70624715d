import { useEffect, useState } from "react";

const STEPS: [number, Intl.RelativeTimeFormatUnit][] = [
  [60, "minute"],
  [24, "hour"],
  [7, "day"],
  [4.35, "week"],
  [12, "month"],
  [Infinity, "year"],
];

/** "3 minutes ago" in `locale`; `justNow` under 45 s. */
export function relativeTime(iso: string, now: number, locale: string | undefined, justNow: string): string {
  const seconds = Math.max(0, (now - Date.parse(iso)) / 1000);
  if (!Number.isFinite(seconds)) return "";
  if (seconds < 45) return justNow;
  const format = new Intl.RelativeTimeFormat(locale, { numeric: "auto" });
  let value = seconds / 60;
  for (const [size, unit] of STEPS) {
    if (value < size) return format.format(-Math.round(value), unit);
    value /= size;
  }
  return "";
}

/** The current time, updated every `everyMs` while mounted (relative times stay right). */
export function useNow(everyMs = 30000): number {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    const timer = setInterval(() => setNow(Date.now()), everyMs);
    return () => clearInterval(timer);
  }, [everyMs]);
  return now;
}
