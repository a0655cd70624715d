// Herald's demo inbox, built from @herald/react: a bell with its dropdown, toasts and a preferences
// drawer. Sign-in is dev-only: the page asks the gateway's GET /dev/token (served only with
// HERALD_DEV_TOKENS=1) for a token; a real front end gets its JWT from the product's own auth service.
import "@herald/react/styles.css";
import "./demo.css";

import {
  HeraldProvider,
  NotificationBell,
  NotificationToast,
  PreferencesPanel,
  useHerald,
  useUnreadCount,
} from "@herald/react";
import { StrictMode, useEffect, useMemo, useRef, useState } from "react";
import type { FormEvent } from "react";
import { createRoot } from "react-dom/client";

type Theme = "light" | "dark";

const USER_KEY = "herald-demo-user";
const THEME_KEY = "herald-demo-theme";
const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/notifications`;

/** Tokens from /dev/token, cached until a minute before expiry; retried while the gateway is down. */
function tokenSource(user: string) {
  let cached: { token: string; exp: number } | null = null;
  return async function getToken(): Promise<string> {
    if (cached && cached.exp * 1000 - Date.now() > 60000) return cached.token;
    for (let attempt = 0; ; attempt++) {
      let response: Response;
      try {
        response = await fetch(`/dev/token?user=${encodeURIComponent(user)}`, { cache: "no-store" });
      } catch {
        await new Promise((resolve) => setTimeout(resolve, Math.min(500 * 2 ** attempt, 5000)));
        continue;
      }
      if (!response.ok) throw new Error(`/dev/token answered ${response.status}`);
      const { token } = (await response.json()) as { token: string };
      const payload = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"))) as { exp: number };
      cached = { token, exp: payload.exp };
      return token;
    }
  };
}

function App() {
  const [user, setUser] = useState<string | null>(
    () => new URLSearchParams(location.search).get("user") ?? localStorage.getItem(USER_KEY),
  );
  const [theme, setTheme] = useState<Theme>(() => {
    const saved = localStorage.getItem(THEME_KEY);
    if (saved === "light" || saved === "dark") return saved;
    return matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
  });
  useEffect(() => {
    document.documentElement.dataset.theme = theme;
    localStorage.setItem(THEME_KEY, theme);
  }, [theme]);
  const getToken = useMemo(() => (user ? tokenSource(user) : undefined), [user]);

  if (!user || !getToken) {
    return (
      <Login
        onSignIn={(name) => {
          localStorage.setItem(USER_KEY, name);
          setUser(name);
        }}
      />
    );
  }
  return (
    <HeraldProvider key={user} url={wsUrl} getToken={getToken} options={{ backoffMaxMs: 5000 }} theme={theme}>
      <Inbox
        user={user}
        theme={theme}
        onTheme={() => setTheme(theme === "dark" ? "light" : "dark")}
        onSignOut={() => {
          localStorage.removeItem(USER_KEY);
          history.replaceState(null, "", location.pathname);
          setUser(null);
        }}
      />
    </HeraldProvider>
  );
}

function Login({ onSignIn }: { onSignIn: (user: string) => void }) {
  const [name, setName] = useState("");
  const submit = (event: FormEvent) => {
    event.preventDefault();
    if (name.trim()) onSignIn(name.trim());
  };
  return (
    <>
      <header className="topbar">
        <Brand />
      </header>
      <main>
        <section className="card" aria-labelledby="login-title">
          <h1 id="login-title">Sign in to the demo</h1>
          <p className="muted">
            Dev mode mints a token for any user id (<code>GET /dev/token</code>, only with <code>HERALD_DEV_TOKENS=1</code>).
            In production your own auth service issues the JWT.
          </p>
          <form className="login" onSubmit={submit}>
            <label htmlFor="user-input">User id</label>
            <input
              id="user-input"
              name="user"
              placeholder="e.g. alice"
              autoComplete="off"
              required
              pattern="[A-Za-z0-9._:@\-]{1,128}"
              value={name}
              onChange={(event) => setName(event.target.value)}
            />
            <button className="primary" type="submit">
              Connect
            </button>
          </form>
        </section>
      </main>
    </>
  );
}

function Brand() {
  return (
    <div className="brand">
      <span className="logo" aria-hidden="true">
        ◆
      </span>{" "}
      Herald <span className="muted">demo inbox</span>
    </div>
  );
}

declare global {
  interface Window {
    heraldDemo?: { client: unknown; user: string };
  }
}

function Inbox({ user, theme, onTheme, onSignOut }: { user: string; theme: Theme; onTheme: () => void; onSignOut: () => void }) {
  const { client, state, role, strings } = useHerald();
  const { unread } = useUnreadCount();
  const [open, setOpen] = useState(false);
  const [prefsOpen, setPrefsOpen] = useState(false);
  const drawer = useRef<HTMLDialogElement>(null);
  const prefsButton = useRef<HTMLButtonElement>(null);

  // For tests and curious developers: the live client.
  useEffect(() => {
    window.heraldDemo = { client, user };
  }, [client, user]);
  useEffect(() => {
    document.title = unread ? `(${unread}) Herald · demo inbox` : "Herald · demo inbox";
  }, [unread]);
  useEffect(() => {
    const dialog = drawer.current;
    if (!dialog) return;
    if (prefsOpen && !dialog.open) dialog.showModal();
    if (!prefsOpen && dialog.open) dialog.close();
  }, [prefsOpen]);

  return (
    <>
      <header className="topbar">
        <Brand />
        <div className="session">
          <span className="status" id="status" data-state={state} data-role={role ?? ""} role="img" aria-label={strings.connection(state)} title={strings.connection(state)} />
          <span className="who">{user}</span>
          <button type="button" className="icon-button" onClick={onTheme} aria-label={theme === "dark" ? "Light theme" : "Dark theme"} title="Theme">
            {theme === "dark" ? "☀" : "☾"}
          </button>
          <button ref={prefsButton} type="button" id="prefs-button" className="link" onClick={() => setPrefsOpen(true)}>
            Preferences
          </button>
          <NotificationBell open={open} onOpenChange={setOpen} />
          <button type="button" className="link" id="logout" onClick={onSignOut}>
            Sign out
          </button>
        </div>
      </header>
      <main>
        <section className="card" aria-labelledby="welcome-title">
          <h1 id="welcome-title">Hello, {user}</h1>
          <p>Notifications for this user arrive live under the bell. Send one from a terminal:</p>
          <pre>
            <code>{`herald send --user ${user} --type COURSE_NEW_CONTENT \\\n  --title "New lesson" --message "Lesson 7 is out"`}</code>
          </pre>
          <p className="muted">
            Open this page in more tabs: they share one connection, and reading, deleting and preferences stay in step. A plain
            JavaScript example without React is at <a href="/plain.html">/plain.html</a>.
          </p>
        </section>
      </main>
      <dialog
        ref={drawer}
        className="drawer"
        aria-label="Preferences"
        onClose={() => {
          setPrefsOpen(false);
          prefsButton.current?.focus();
        }}
      >
        <div className="drawer-head">
          <button type="button" className="icon-button" id="prefs-close" aria-label="Close" onClick={() => setPrefsOpen(false)}>
            ✕
          </button>
        </div>
        {prefsOpen && <PreferencesPanel push={{ serviceWorkerUrl: "/sw.js", device: navigator.userAgent.slice(0, 60) }} />}
      </dialog>
      <NotificationToast onOpen={() => setOpen(true)} />
    </>
  );
}

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
