// @vitest-environment node
// Server-side rendering: no window, no document; importing and rendering must not touch them.
import { renderToString } from "react-dom/server";
import { describe, expect, it } from "vitest";

describe("server-side rendering", () => {
  it("imports and renders without a window", async () => {
    expect(typeof window).toBe("undefined");
    const herald = await import("../src");
    const html = renderToString(
      <herald.HeraldProvider url="ws://example.test/notifications" getToken={() => "t"}>
        <herald.NotificationBell />
        <herald.NotificationDropdown />
        <herald.NotificationToast />
        <herald.PreferencesPanel />
      </herald.HeraldProvider>,
    );
    expect(html).toContain('aria-label="Notifications"');
    expect(html).toContain('role="feed"');
    expect(html).toContain('aria-live="polite"');
  });
});
