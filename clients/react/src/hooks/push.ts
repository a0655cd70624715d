// usePush: Web Push for this browser, subscribed and registered with the server.
import { useCallback, useEffect, useState } from "react";

import { useHeraldContext } from "../context";

export type PushStatus = "unsupported" | "denied" | "off" | "on" | "unknown";

export interface UsePushOptions {
  /** The service worker that shows pushes; registered on subscribe when given, else the page's own is used. */
  serviceWorkerUrl?: string;
  /** A label the server stores beside the subscription. */
  device?: string;
}

export interface UsePush {
  status: PushStatus;
  supported: boolean;
  busy: boolean;
  error: Error | null;
  subscribe: () => Promise<void>;
  unsubscribe: () => Promise<void>;
}

interface PushEnvironment {
  navigator?: { serviceWorker?: ServiceWorkerContainer };
  Notification?: { permission: string; requestPermission?: () => Promise<string> };
  PushManager?: unknown;
}

function pushEnvironment(): PushEnvironment {
  return globalThis as unknown as PushEnvironment;
}

/** Web Push for this browser: subscribe (asks permission) and unsubscribe, registered with the server. */
export function usePush({ serviceWorkerUrl, device }: UsePushOptions = {}): UsePush {
  const { client } = useHeraldContext();
  const [status, setStatus] = useState<PushStatus>("unknown");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<Error | null>(null);

  const registration = useCallback(async () => {
    const container = pushEnvironment().navigator?.serviceWorker;
    if (!container) throw new Error("no service worker support");
    if (serviceWorkerUrl) return container.register(serviceWorkerUrl);
    return container.ready;
  }, [serviceWorkerUrl]);

  useEffect(() => {
    const env = pushEnvironment();
    if (!env.navigator?.serviceWorker || !env.PushManager || !env.Notification) {
      setStatus("unsupported");
      return undefined;
    }
    if (env.Notification.permission === "denied") {
      setStatus("denied");
      return undefined;
    }
    let live = true;
    env.navigator.serviceWorker
      .getRegistration(serviceWorkerUrl)
      .then((reg) => reg?.pushManager.getSubscription())
      .then((subscription) => live && setStatus(subscription ? "on" : "off"))
      .catch(() => live && setStatus("off"));
    return () => {
      live = false;
    };
  }, [serviceWorkerUrl]);

  const run = useCallback(async (work: () => Promise<PushStatus>) => {
    setBusy(true);
    try {
      setStatus(await work());
      setError(null);
    } catch (err) {
      setError(err as Error);
      throw err;
    } finally {
      setBusy(false);
    }
  }, []);

  const subscribe = useCallback(
    () =>
      run(async () => {
        if (!client) throw new Error("not connected");
        const permission = await pushEnvironment().Notification?.requestPermission?.();
        if (permission === "denied") return "denied";
        await client.push.subscribe((await registration()) as never, device ? { device } : undefined);
        return "on";
      }),
    [client, device, registration, run],
  );
  const unsubscribe = useCallback(
    () =>
      run(async () => {
        if (!client) throw new Error("not connected");
        await client.push.unsubscribe((await registration()) as never);
        return "off";
      }),
    [client, registration, run],
  );
  return { status, supported: status !== "unsupported", busy, error, subscribe, unsubscribe };
}
