// usePreferences: the user's effective preferences, live across tabs and devices.
import type { Preferences, PreferencesPatch } from "@herald/client";
import { useCallback, useEffect, useRef, useState } from "react";

import { useHeraldContext } from "../context";

export interface UsePreferences {
  preferences: Preferences | null;
  loading: boolean;
  error: Error | null;
  saving: boolean;
  /** Optimistic deep merge; rolls back and rejects if the server refuses (e.g. a critical channel). */
  update: (patch: PreferencesPatch) => Promise<void>;
  reset: () => Promise<void>;
  refresh: () => Promise<void>;
}

function merge<T>(base: T, patch: unknown): T {
  if (patch === null || typeof patch !== "object" || Array.isArray(patch) || base === null || typeof base !== "object") {
    return patch as T;
  }
  const out: Record<string, unknown> = { ...(base as Record<string, unknown>) };
  for (const [key, value] of Object.entries(patch as Record<string, unknown>)) {
    out[key] = key in out ? merge(out[key], value) : value;
  }
  return out as T;
}

/** The effective preferences, live across tabs and devices (`preferences:updated`). */
export function usePreferences(): UsePreferences {
  const { client } = useHeraldContext();
  const [preferences, setPreferences] = useState<Preferences | null>(null);
  const [loading, setLoading] = useState(false);
  const [error, setError] = useState<Error | null>(null);
  const [saving, setSaving] = useState(false);
  const current = useRef(preferences);
  current.current = preferences;

  const refresh = useCallback(async () => {
    if (!client) return;
    setLoading(true);
    try {
      const fresh = await client.preferences.get();
      setPreferences(fresh);
      setError(null);
    } catch (err) {
      setError(err as Error);
    } finally {
      setLoading(false);
    }
  }, [client]);

  useEffect(() => {
    if (!client) return undefined;
    let loaded = false;
    const load = () => {
      loaded = true;
      void refresh();
    };
    if (client.state === "open") load();
    const offs = [
      client.on("preferences:updated", (prefs) => setPreferences(prefs)),
      client.on("connected", () => load()),
      client.on("state", ({ state }) => {
        if (state === "open" && !loaded) load();
      }),
    ];
    return () => offs.forEach((off) => off());
  }, [client, refresh]);

  // Saves may overlap (two switches flipped quickly). Only the newest save's reply is shown: an older one
  // predates the newer optimistic change. A failure rolls back to the snapshot only when no other save
  // overlapped it; otherwise the snapshot may hold another save's change (or miss one), so the
  // preferences are read again once every save has settled.
  const saves = useRef({ latest: 0, inFlight: 0, reread: false });
  const save = useCallback(
    async (optimisticValue: Preferences | null, send: () => Promise<Preferences>) => {
      const state = saves.current;
      const mine = ++state.latest;
      const before = current.current;
      if (optimisticValue) setPreferences(optimisticValue);
      state.inFlight += 1;
      setSaving(true);
      try {
        const saved = await send();
        if (mine === state.latest) setPreferences(saved);
        setError(null);
      } catch (err) {
        if (mine === state.latest && state.inFlight === 1) setPreferences(before);
        else state.reread = true;
        setError(err as Error);
        throw err;
      } finally {
        state.inFlight -= 1;
        if (state.inFlight === 0) {
          setSaving(false);
          if (state.reread) {
            state.reread = false;
            void refresh();
          }
        }
      }
    },
    [refresh],
  );

  const update = useCallback(
    (patch: PreferencesPatch) => {
      if (!client) return Promise.reject(new Error("not connected"));
      const base = current.current;
      return save(base ? merge(base, patch) : null, () => client.preferences.update(patch));
    },
    [client, save],
  );
  const reset = useCallback(() => {
    if (!client) return Promise.reject(new Error("not connected"));
    return save(null, () => client.preferences.reset());
  }, [client, save]);

  return { preferences, loading, error, saving, update, reset, refresh };
}
