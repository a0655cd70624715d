import { createHeraldClient } from "@herald/client";
import type { AnyHeraldClient, ClientState, SharedClientOptions } from "@herald/client";
import { createContext, useContext, useEffect, useMemo, useRef, useState, useSyncExternalStore } from "react";
import type { ReactNode } from "react";

import { defaultStrings } from "./strings";
import type { HeraldStrings } from "./strings";

export type HeraldTheme = "light" | "dark" | "auto";

export interface HeraldProviderProps {
  /** ws(s)://host:port/notifications, or several gateways to fail over between. */
  url?: string | string[];
  /** Returns a JWT; called on every (re)connect and before the current token expires. */
  getToken?: () => string | Promise<string>;
  /** Client options (timeouts, backoff, shareTabs: false for one socket per tab, shareKey, ...). */
  options?: Omit<SharedClientOptions, "getToken">;
  /** A client made elsewhere (tests, or an app that shares it with non-React code); then url/getToken are unused. */
  client?: AnyHeraldClient;
  /** Replacement words (translation). */
  strings?: Partial<HeraldStrings>;
  /** For relative times and dates; default: the browser's. */
  locale?: string;
  theme?: HeraldTheme;
  children?: ReactNode;
}

export interface HeraldContextValue {
  client: AnyHeraldClient | null;
  strings: HeraldStrings;
  locale: string | undefined;
  theme: HeraldTheme;
}

const HeraldContext = createContext<HeraldContextValue | null>(null);

/**
 * Creates the client on mount (never during server rendering or at import) and closes it on unmount.
 * With BroadcastChannel, the tabs of a browser share one socket (see @herald/client).
 */
export function HeraldProvider({
  url,
  getToken,
  options,
  client: given,
  strings,
  locale,
  theme = "auto",
  children,
}: HeraldProviderProps) {
  const [owned, setOwned] = useState<AnyHeraldClient | null>(null);
  const tokenRef = useRef(getToken);
  tokenRef.current = getToken;
  const optionsRef = useRef(options);
  optionsRef.current = options;
  const urlKey = Array.isArray(url) ? url.join(" ") : (url ?? "");

  useEffect(() => {
    if (given || !urlKey) return undefined;
    const created = createHeraldClient(urlKey.split(" "), {
      ...optionsRef.current,
      getToken: () => {
        const source = tokenRef.current;
        if (!source) throw new Error("HeraldProvider needs getToken");
        return source();
      },
    });
    setOwned(created);
    created.connect().catch(() => {
      // `closed` tells the components; useHerald().state is "closed".
    });
    return () => {
      created.close();
      setOwned(null);
    };
  }, [given, urlKey]);

  const client = given ?? owned;
  const merged = useMemo(() => ({ ...defaultStrings, ...strings }), [strings]);
  const value = useMemo(() => ({ client, strings: merged, locale, theme }), [client, merged, locale, theme]);
  return <HeraldContext.Provider value={value}>{children}</HeraldContext.Provider>;
}

export function useHeraldContext(): HeraldContextValue {
  const value = useContext(HeraldContext);
  if (!value) throw new Error("Herald hooks and components must be used inside <HeraldProvider>");
  return value;
}

/** The strings of the provider, with a component's own overrides on top. */
export function useStrings(overrides?: Partial<HeraldStrings>): HeraldStrings {
  const { strings } = useHeraldContext();
  return useMemo(() => (overrides ? { ...strings, ...overrides } : strings), [strings, overrides]);
}

/** Re-render on the client's `events`; `read` picks the value (a primitive, or a stable object). */
export function useClientValue<T>(client: AnyHeraldClient | null, events: string[], read: (c: AnyHeraldClient) => T, fallback: T): T {
  const key = events.join(",");
  const subscribe = useMemo(
    () => (notify: () => void) => {
      if (!client) return () => {};
      const offs = key.split(",").map((event) => client.on(event as "state", notify));
      return () => offs.forEach((off) => off());
    },
    [client, key],
  );
  const snapshot = () => (client ? read(client) : fallback);
  return useSyncExternalStore(subscribe, snapshot, () => fallback);
}

export interface UseHerald {
  client: AnyHeraldClient | null;
  /** "idle" until the client exists (and during server rendering). */
  state: ClientState;
  userId: string | null;
  /** The tab's part in the shared connection: "leader" holds the socket. */
  role: string | null;
  strings: HeraldStrings;
  locale: string | undefined;
}

/** The client and its connection state. */
export function useHerald(): UseHerald {
  const { client, strings, locale } = useHeraldContext();
  const state = useClientValue(client, ["state", "connected"], (c) => c.state, "idle" as ClientState);
  const userId = useClientValue(client, ["state", "connected"], (c) => c.userId, null);
  const role = useClientValue(client, ["role"], (c) => ("role" in c ? c.role : "leader"), null as string | null);
  return { client, state, userId, role, strings, locale };
}
