// docs/clients.md's React quick start, as printed: extracted, compiled and rendered against a fake gateway.
import { readFileSync, mkdirSync, writeFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { render, screen, waitFor } from "@testing-library/react";
import type { ReactElement } from "react";
import { afterEach, expect, it, vi } from "vitest";

import { FakeGateway } from "./gateway";

const here = dirname(fileURLToPath(import.meta.url));

function snippet(name: string): string {
  const docs = readFileSync(resolve(here, "../../../docs/clients.md"), "utf8");
  const after = docs.split(`<!-- snippet:${name} -->`)[1];
  return after.split("```")[1].split("\n").slice(1).join("\n");
}

afterEach(() => vi.unstubAllGlobals());

it("the documented React quick start renders a live bell", async () => {
  const code = snippet("react");
  expect(code.trim().split("\n").length).toBeLessThanOrEqual(15);
  const file = resolve(here, ".generated/ReactQuickStart.tsx");
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, code);

  const gateway = new FakeGateway();
  gateway.notify({ title: "hello" }, { live: false });
  const urls: string[] = [];
  vi.stubGlobal("WebSocket", class extends gateway.WebSocket {
    constructor(url: string) {
      super(url);
      urls.push(url);
    }
  });
  vi.stubGlobal("BroadcastChannel", undefined); // one socket per tab here: no election to wait for
  const token = `x.${btoa(JSON.stringify({ sub: "u1", exp: Date.now() / 1000 + 3600 }))}.y`;
  vi.stubGlobal("fetch", async (url: string) => {
    expect(url).toBe("/api/herald-token");
    return new Response(JSON.stringify({ token }));
  });

  const { App } = (await import(/* @vite-ignore */ file)) as { App: () => ReactElement };
  const view = render(<App />);
  await waitFor(() => screen.getByRole("button", { name: "Notifications, 1 unread" }));
  expect(urls).toEqual(["wss://herald.example.com/notifications"]);
  view.unmount();
  await waitFor(() => expect(gateway.sockets.size).toBe(0));
});
