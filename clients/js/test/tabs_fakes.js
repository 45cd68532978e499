// Test doubles for tabs.js: one browser profile's Web Locks and
// BroadcastChannel, shared by fake "tabs", and a tab opener that gives each
// tab its own fake clock and fake WebSocket. Everything the real APIs do
// asynchronously (lock grants, message delivery) is queued and runs only in
// settle(), so a test decides exactly when the tabs hear of each other.

import { connect } from "../turnstile.js";
import { fakeClock, fakeWebSocketClass, TOKEN, welcomeFrame, WS_URL } from "./helpers.js";

/** The bound on queued tasks run by one settle(): more means a relay loop. */
const MAX_TASKS = 10_000;

export function fakeBrowser() {
  const tasks = [];
  const locks = new Map(); // name -> { holder, queue }
  const channels = new Set();
  const later = (fn) => tasks.push(fn);

  const lockState = (name) => {
    let s = locks.get(name);
    if (!s) locks.set(name, (s = { holder: null, queue: [] }));
    return s;
  };
  const abortError = () => Object.assign(new Error("aborted"), { name: "AbortError" });

  function grant(name) {
    const s = lockState(name);
    if (s.holder || s.queue.length === 0) return;
    const req = s.queue.shift();
    s.holder = req;
    later(() => {
      Promise.resolve()
        .then(() => req.cb({ name, mode: "exclusive" }))
        .then(req.resolve, req.reject)
        .finally(() => release(name, req));
    });
  }

  function release(name, req) {
    const s = lockState(name);
    if (s.holder !== req) return;
    s.holder = null;
    grant(name);
  }

  function tab(tabName) {
    const lockApi = {
      request(name, options, cb) {
        return new Promise((resolve, reject) => {
          const signal = options.signal;
          if (signal?.aborted) {
            reject(abortError());
            return;
          }
          const s = lockState(name);
          const req = { tab: tabName, cb, resolve, reject };
          if (options.ifAvailable && (s.holder || s.queue.length > 0)) {
            later(() => Promise.resolve().then(() => cb(null)).then(resolve, reject));
            return;
          }
          s.queue.push(req);
          signal?.addEventListener("abort", () => {
            const i = s.queue.indexOf(req);
            if (i >= 0) {
              s.queue.splice(i, 1);
              reject(abortError());
            }
          });
          grant(name);
        });
      },
    };
    class FakeBroadcastChannel {
      constructor(name) {
        this.name = name;
        this.tab = tabName;
        this.closed = false;
        this.onmessage = null;
        channels.add(this);
      }
      postMessage(data) {
        if (this.closed) throw Object.assign(new Error("channel closed"), { name: "InvalidStateError" });
        for (const ch of channels) {
          if (ch === this || ch.name !== this.name) continue;
          const copy = structuredClone(data);
          later(() => {
            if (!ch.closed) ch.onmessage?.({ data: copy });
          });
        }
      }
      close() {
        this.closed = true;
        channels.delete(this);
      }
    }
    /** What closing the tab does: its channels close, its locks go to the next in line. */
    const kill = () => {
      for (const ch of [...channels]) if (ch.tab === tabName) ch.close();
      for (const [name, s] of locks) {
        s.queue = s.queue.filter((r) => r.tab !== tabName);
        if (s.holder?.tab === tabName) release(name, s.holder);
      }
    };
    /** The tab's window, as far as tabs.js listens to it ("pagehide"). */
    const page = new EventTarget();
    return { locks: lockApi, BroadcastChannel: FakeBroadcastChannel, page, kill };
  }

  /** Runs queued tasks (and the promise jobs they start) until none are left. */
  async function settle() {
    for (let n = 0; ; n++) {
      await new Promise((r) => setImmediate(r));
      if (tasks.length === 0) return;
      if (n > MAX_TASKS) throw new Error("fake browser: tasks keep coming (a relay loop?)");
      tasks.shift()();
    }
  }

  return { tab, settle, holder: (name) => lockState(name).holder?.tab ?? null };
}

const EVENT_NAMES = ["welcome", "notice", "forcedLogout", "connectivity", "presence", "loggedOut",
  "error", "reconnecting", "stopped", "tabRefused"];

/**
 * Opens a tab of `browser` using the session of TOKEN: its own clock and
 * WebSocket class, every event recorded. `close()` is the tab going away
 * (not the SDK's close()): its clock stops, its socket is gone.
 */
export function openTab(browser, name, options = {}) {
  const clock = fakeClock();
  const { FakeWebSocket, sockets } = fakeWebSocketClass();
  const env = browser.tab(name);
  const client = connect(WS_URL, TOKEN, {
    WebSocket: FakeWebSocket,
    timers: clock,
    random: () => 0.5,
    network: null,
    tabs: { locks: env.locks, BroadcastChannel: env.BroadcastChannel, page: env.page },
    onListenerError: (e) => {
      throw e;
    },
    ...options,
  });
  const events = [];
  for (const e of EVENT_NAMES) client.on(e, (data) => events.push([e, data]));
  const of = (e) => events.filter(([n]) => n === e).map(([, d]) => d);
  const t = {
    name,
    client,
    clock,
    sockets,
    events,
    of,
    dead: false,
    /** The tab's window: dispatch "pagehide" on it. */
    page: env.page,
    /** The tab's socket, if it has an open one. */
    socket: () => sockets.find((s) => s.readyState !== 3) ?? null,
    /** Opens and welcomes this tab's latest socket. */
    welcome(extra = {}) {
      const ws = sockets[sockets.length - 1];
      ws.open();
      ws.receive(welcomeFrame(extra));
      return ws;
    },
    close() {
      t.dead = true;
      for (const s of sockets) s.readyState = 3;
      env.kill();
    },
  };
  return t;
}

/** Open sockets over all tabs: what the broker would count. */
export function openSockets(tabs) {
  return tabs.filter((t) => !t.dead).flatMap((t) => t.sockets.filter((s) => s.readyState !== 3));
}
