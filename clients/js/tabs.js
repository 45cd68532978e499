// turnstile browser SDK, tabs: one socket per browser for all its tabs.
//
// Owns the election and the relay. Tabs of one browser profile that use the
// same session (same broker URL and connect token, or the same `tabGroup`)
// queue for one Web Lock; the tab holding it is the *leader*: it runs the one
// TurnstileClient (the one WebSocket) and relays every event it emits to the
// other tabs over a BroadcastChannel. The other tabs are *followers*: they
// mirror the leader's state, and send their commands (status, ack, watch,
// logout, reconnect now) to it over the same channel. When the leader tab
// closes, the browser releases its lock and the next tab in the queue takes
// it at once, opens its own socket with the same token and so resumes the
// session within grace: no forced logout, no second sign-in.
//
// With `singleTab` a tab that finds the lock taken is refused instead
// (event `tabRefused`, stopped `tab_refused`) and opens no socket.
//
// Where Web Locks or BroadcastChannel are missing (Node, old browsers,
// pages that are not a secure context) `connectAcrossTabs` returns null and
// the caller falls back to one socket per tab. docs/clients.md has the
// details.

import { Emitter } from "./emitter.js";

/** The events of a client, relayed from the leader to every tab. */
export const EVENTS = Object.freeze(["welcome", "notice", "forcedLogout", "connectivity", "presence",
  "loggedOut", "error", "reconnecting", "stopped"]);

/** Relay envelope version; messages of another version are ignored. */
const WIRE = 1;
/** Commands a follower keeps until the leader confirmed them (re-sent to a new leader). */
const MAX_PENDING_COMMANDS = 64;
/** Notices a tab remembers (de-duplication; a leader shows them to a tab that joins later). */
const MAX_REMEMBERED_NOTICES = 256;
/** Stop reasons after which the session is over for every tab (all but this tab's own close). */
const FINAL_EVENTS = new Set(["forcedLogout", "loggedOut"]);

/**
 * The Web Locks and BroadcastChannel to use, or null when this environment
 * cannot share a socket: `options.tabs` when given (tests inject fakes),
 * else the browser's own — only in a window or a worker (Node has a
 * BroadcastChannel and, in new versions, navigator.locks, but no tabs).
 */
export function tabSupport(options = {}) {
  if (options.tabs) return options.tabs;
  const g = globalThis;
  const browser = typeof g.document === "object" || typeof g.WorkerGlobalScope === "function";
  const locks = g.navigator?.locks;
  if (!browser || typeof locks?.request !== "function" || typeof g.BroadcastChannel !== "function") return null;
  return { locks, BroadcastChannel: g.BroadcastChannel, page: typeof g.window === "object" ? g.window : null };
}

/**
 * A client shared by the tabs of this browser, or null when tabs are not
 * shared (both options off, or no Web Locks / BroadcastChannel here).
 * `makeClient(options)` builds the real TurnstileClient when this tab leads.
 */
export function connectAcrossTabs(url, token, options, makeClient) {
  const share = options.shareAcrossTabs ?? true;
  const single = options.singleTab ?? false;
  if (typeof share !== "boolean") throw new TypeError("turnstile: options.shareAcrossTabs must be a boolean");
  if (typeof single !== "boolean") throw new TypeError("turnstile: options.singleTab must be a boolean");
  if (options.tabGroup !== undefined && !(typeof options.tabGroup === "string" && options.tabGroup !== "")) {
    throw new TypeError("turnstile: options.tabGroup must be a non-empty string");
  }
  if (!share && !single) return null;
  const support = tabSupport(options);
  if (!support) return null;
  const name = `turnstile:${options.tabGroup ?? hash(`${url}\n${token}`)}`;
  return new TabClient(name, single ? "single" : "share", support, options, makeClient);
}

/** FNV-1a (52 bits) in hex: names the lock without putting the token in it. */
function hash(s) {
  let h = 0xcbf29ce484222325n;
  for (let i = 0; i < s.length; i++) {
    h ^= BigInt(s.charCodeAt(i));
    h = (h * 0x100000001b3n) & 0xffffffffffffffffn;
  }
  return (h >> 12n).toString(16);
}

function randomId() {
  const c = globalThis.crypto;
  if (typeof c?.randomUUID === "function") return c.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

/**
 * One tab's view of the shared connection: the same API and events as
 * TurnstileClient, plus `tabRole` and the `tabRefused` event.
 */
export class TabClient extends Emitter {
  constructor(name, mode, support, options, makeClient) {
    super();
    this._name = name;
    this._mode = mode;
    this._opts = options;
    this._makeClient = makeClient;
    this._tabId = randomId();
    const t = options.timers ?? {};
    this._timers = {
      setTimeout: t.setTimeout ?? ((fn, ms) => globalThis.setTimeout(fn, ms)),
      clearTimeout: t.clearTimeout ?? ((id) => globalThis.clearTimeout(id)),
      now: t.now ?? (() => Date.now()),
    };

    this._role = null; // "leader" | "follower" | null (not yet known, or refused)
    this._client = null; // the real client, while this tab leads
    this._stopped = false;
    this._closing = false; // this tab's own close(): the others carry on
    this._connectivity = "offline";
    this._connectivityDetail = { state: "offline", cause: null };
    this._session = null;
    this._sessionKey = null;
    this._rttMs = null;
    this._final = null; // {announce: [event, data] | null, stopped} once the session ended for everyone
    this._notices = new Map(); // id -> the notice last emitted and not acked (de-duplication; a leader replays them)
    this._logoutOnWelcome = false; // a logout asked for before this tab's socket was welcomed
    this._watching = false;
    this._pending = new Map(); // command id -> {op, arg}, until the leader confirms
    this._seq = 0;
    this._logoutWaiters = new Map(); // command id -> resolve
    this._logoutTimer = null;
    this._release = null; // resolves the held lock's promise
    this._abort = typeof AbortController === "function" ? new AbortController() : null;
    // A leader tab that is going away hands over at once: its socket's close
    // reaches the broker before the next tab's socket does (a resume), and
    // the others hear "bye" instead of waiting for the lock.
    this._page = support.page ?? null;
    this._onPageHide = () => {
      if (this._client) this.close();
    };
    this._page?.addEventListener?.("pagehide", this._onPageHide);

    this._channel = null;
    if (mode === "share") {
      this._channel = new support.BroadcastChannel(name);
      this._channel.onmessage = (ev) => this._onRelay(ev && ev.data);
      this._post({ kind: "hello" });
    }
    const held = new Promise((resolve) => (this._release = resolve));
    const lockOptions = mode === "single" ? { ifAvailable: true } : this._abort ? { signal: this._abort.signal } : {};
    let request;
    try {
      request = support.locks.request(name, lockOptions, (lock) => {
        if (this._stopped) return undefined;
        if (lock === null) {
          this._refused();
          return undefined;
        }
        this._lead();
        return held;
      });
    } catch (e) {
      request = Promise.reject(e);
    }
    Promise.resolve(request).catch((e) => {
      if (this._stopped || this._role !== null || (e && e.name === "AbortError")) return;
      // The lock cannot be had (an opaque origin, say): this tab connects alone.
      this._lead();
    });
  }

  // --- public API: the same as TurnstileClient -------------------------------

  get connectivity() {
    return this._connectivity;
  }

  get connectivityCause() {
    return this._connectivityDetail.cause;
  }

  get session() {
    return this._session;
  }

  get stopped() {
    return this._stopped;
  }

  get rttMs() {
    return this._client ? this._client.rttMs : this._rttMs;
  }

  /** "leader" (this tab holds the socket), "follower" (another tab does), or null (not decided yet, or stopped before). */
  get tabRole() {
    return this._role;
  }

  setStatus(status) {
    if (typeof status !== "string" || status === "") throw new TypeError("turnstile: status must be a non-empty string");
    if (this._client) return this._client.setStatus(status);
    // One status at a time: a newer one replaces a queued older one.
    for (const [id, c] of this._pending) if (c.op === "status") this._pending.delete(id);
    this._command("status", status);
    return this._connectivity === "online" && this._role === "follower";
  }

  ack(noticeId) {
    if (typeof noticeId !== "string" || noticeId === "") throw new TypeError("turnstile: noticeId must be a non-empty string");
    if (this._client) {
      this._notices.delete(noticeId);
      return this._client.ack(noticeId);
    }
    this._notices.delete(noticeId);
    this._command("ack", noticeId);
    return this._connectivity === "online" && this._role === "follower";
  }

  watchPresence() {
    this._watching = true;
    if (this._client) this._client.watchPresence();
    else this._post({ kind: "cmd", op: "watch" }); // sticky: re-sent to every new leader
  }

  logout() {
    if (this._stopped) return Promise.resolve(false);
    if (this._client) return this._client.logout();
    return new Promise((resolve) => {
      const id = this._command("logout");
      this._logoutWaiters.set(id, resolve);
      if (this._logoutTimer === null) {
        // The leader's own wait, plus as long again for the relay and a handover.
        this._logoutTimer = this._timers.setTimeout(() => {
          this._logoutTimer = null;
          this._stopAll("logout_unconfirmed");
        }, 2 * (this._opts.logoutTimeoutMs ?? 5_000));
      }
    });
  }

  /** This tab stops; the others carry on (one of them takes over the socket if this tab led). */
  close() {
    if (this._stopped) {
      // A tab that kept the lock after the session ended lets go of it.
      this._abort?.abort();
      this._release?.();
      this._channel?.close();
      this._channel = null;
      this._page?.removeEventListener?.("pagehide", this._onPageHide);
      return;
    }
    this._closing = true;
    if (this._client) {
      this._post({ kind: "bye" });
      this._client.close(); // emits stopped "closed" through _fromClient
    }
    this._finish({ reason: "closed", code: null });
  }

  reconnectNow() {
    if (this._client) this._client.reconnectNow();
    else if (this._role === "follower") this._post({ kind: "cmd", op: "reconnect_now" });
  }

  // --- election ---------------------------------------------------------------

  _lead() {
    if (this._stopped) return;
    this._role = "leader";
    const { shareAcrossTabs: _s, singleTab: _t, tabGroup: _g, tabs: _x, ...own } = this._opts;
    let client;
    try {
      client = this._makeClient(own);
    } catch (e) {
      this._emit("error", { code: "connect_failed", message: String(e && e.message ? e.message : e) });
      this._finish({ reason: "connect_failed", code: null });
      return;
    }
    this._client = client;
    for (const name of EVENTS) client.on(name, (data, extra) => this._fromClient(name, data, extra));
    // Taking over from another tab: the session is being resumed.
    if (this._connectivity === "online") this._mirror("connectivity", "degraded");
    this._post({ kind: "leader", state: this._state() });
    if (this._watching) client.watchPresence();
    // What this tab asked for while it followed.
    const mine = [...this._pending.values()];
    this._pending.clear();
    for (const c of mine) this._execute(c.op, c.arg);
    // A logout asked for while following is sent once this socket is welcomed
    // (before, the client could only give up on it); the timer still bounds it.
    if (this._logoutWaiters.size > 0) this._logoutOnWelcome = true;
  }

  /** Ends this tab and, when it leads, the session's socket for every tab. */
  _stopAll(reason) {
    const c = this._client;
    this._finish({ reason, code: null }, c !== null);
    c?.close();
  }

  _refused() {
    this._emit("tabRefused", {
      message: "This session is already open in another tab of this browser. Use that tab, or close it and reload this one.",
    });
    this._finish({ reason: "tab_refused", code: null });
  }

  /** Everything the real client emits: mirrored here and relayed to the other tabs. */
  _fromClient(name, data, extra) {
    if (name === "stopped") {
      if (this._closing) return; // this tab's own close(): not the others' business
      this._finish(data, true);
      return;
    }
    if (name === "connectivity" && data === "offline") return; // only ever before a stop
    if (FINAL_EVENTS.has(name)) this._final = { announce: [name, data], stopped: null };
    this._post({ kind: "event", name, data, extra, rttMs: this._client?.rttMs ?? null });
    this._mirror(name, data, extra);
    if (name === "welcome" && this._logoutOnWelcome && this._client) {
      this._logoutOnWelcome = false;
      const waiters = [...this._logoutWaiters.values()];
      this._logoutWaiters.clear();
      this._client.logout().then((value) => waiters.forEach((resolve) => resolve(value)));
    }
  }

  /** The leader's state for a tab that joins (or hears a new leader). */
  _state() {
    const now = this._timers.now();
    const notices = [...this._notices.values()].filter((n) => !(n.expires_at_ms > 0 && n.expires_at_ms < now));
    return {
      connectivity: this._connectivity,
      connectivityDetail: this._connectivityDetail,
      session: this._session,
      rttMs: this.rttMs,
      notices,
      final: this._final,
    };
  }

  // --- relay ------------------------------------------------------------------

  _post(msg) {
    if (!this._channel) return;
    try {
      this._channel.postMessage({ turnstile: WIRE, from: this._tabId, ...msg });
    } catch {
      // closed channel: this tab is stopping
    }
  }

  _onRelay(msg) {
    if (!msg || msg.turnstile !== WIRE || msg.from === this._tabId) return;
    if (msg.to !== undefined && msg.to !== this._tabId) return;
    if (this._role === "leader") {
      this._onFollowerMessage(msg);
      return;
    }
    if (this._stopped) return;
    switch (msg.kind) {
      case "leader":
        this._role = "follower";
        this._applyState(msg.state);
        // A new leader knows nothing of us: say again what is not yet done.
        if (this._watching) this._post({ kind: "cmd", op: "watch" });
        for (const [id, c] of this._pending) this._post({ kind: "cmd", id, op: c.op, arg: c.arg });
        break;
      case "state":
        this._role = "follower";
        this._applyState(msg.state);
        break;
      case "event":
        this._role = "follower";
        if (typeof msg.rttMs === "number") this._rttMs = msg.rttMs;
        if (msg.name === "stopped") {
          this._finish(msg.data);
        } else if (EVENTS.includes(msg.name)) {
          if (FINAL_EVENTS.has(msg.name)) this._final = { announce: [msg.name, msg.data], stopped: null };
          this._mirror(msg.name, msg.data, msg.extra);
        }
        break;
      case "done": {
        this._pending.delete(msg.id);
        const resolve = this._logoutWaiters.get(msg.id);
        if (resolve) {
          this._logoutWaiters.delete(msg.id);
          resolve(msg.value === true);
        }
        break;
      }
      case "bye":
        // The leader tab is closing on purpose; another tab takes over.
        if (this._connectivity === "online") this._mirror("connectivity", "degraded");
        break;
      default:
        break;
    }
  }

  _onFollowerMessage(msg) {
    switch (msg.kind) {
      case "hello":
        this._post({ kind: "state", to: msg.from, state: this._state() });
        break;
      case "cmd":
        if (this._stopped) {
          if (msg.op === "logout") this._post({ kind: "done", to: msg.from, id: msg.id, value: false });
          break;
        }
        if (msg.op === "logout") {
          this._client.logout().then((value) => this._post({ kind: "done", to: msg.from, id: msg.id, value }));
          break;
        }
        this._execute(msg.op, msg.arg);
        if (msg.id !== undefined) this._post({ kind: "done", to: msg.from, id: msg.id });
        break;
      default:
        break;
    }
  }

  /** A command on the real client (leader only). */
  _execute(op, arg) {
    const c = this._client;
    if (!c || this._stopped) return;
    try {
      if (op === "status" && typeof arg === "string" && arg !== "") c.setStatus(arg);
      else if (op === "ack" && typeof arg === "string" && arg !== "") {
        this._notices.delete(arg);
        c.ack(arg);
      } else if (op === "watch") c.watchPresence();
      else if (op === "reconnect_now") c.reconnectNow();
    } catch {
      // a malformed command from another tab: ignored
    }
  }

  /** Sends a command to the leader and keeps it until confirmed; returns its id. */
  _command(op, arg) {
    const id = `${this._tabId}:${++this._seq}`;
    this._pending.set(id, { op, arg });
    if (this._pending.size > MAX_PENDING_COMMANDS) this._pending.delete(this._pending.keys().next().value);
    this._post({ kind: "cmd", id, op, arg });
    return id;
  }

  _applyState(state) {
    if (!state || typeof state !== "object") return;
    if (typeof state.rttMs === "number") this._rttMs = state.rttMs;
    if (["online", "degraded", "offline"].includes(state.connectivity)) {
      this._mirror("connectivity", state.connectivity, state.connectivityDetail);
    }
    if (state.session && typeof state.session === "object") this._mirror("welcome", state.session);
    for (const n of Array.isArray(state.notices) ? state.notices : []) this._mirror("notice", n);
    const f = state.final;
    if (f && typeof f === "object") {
      if (Array.isArray(f.announce) && FINAL_EVENTS.has(f.announce[0])) this._mirror(f.announce[0], f.announce[1]);
      if (f.stopped) this._finish(f.stopped);
    }
  }

  /** Applies one event to this tab's state and emits it, once. */
  _mirror(name, data, extra) {
    switch (name) {
      case "connectivity": {
        // The same state with another cause (the network, then the broker's
        // word) is news; the detail travels with it.
        const detail = extra && typeof extra === "object" ? extra : { state: data, cause: data === "degraded" ? "network" : null };
        if (data === this._connectivity && detail.cause === this._connectivityDetail.cause) return;
        this._connectivity = data;
        this._connectivityDetail = detail;
        this._emit(name, data, detail);
        return;
      }
      case "welcome": {
        const key = JSON.stringify(data);
        if (key === this._sessionKey) return;
        this._sessionKey = key;
        this._session = data;
        break;
      }
      case "notice": {
        // At-least-once delivery, and a new leader's socket gets the un-acked
        // ones again: each is emitted once per content.
        if (!data || typeof data.id !== "string") return;
        const seen = this._notices.get(data.id);
        if (seen !== undefined && JSON.stringify(seen) === JSON.stringify(data)) return;
        this._notices.delete(data.id);
        this._notices.set(data.id, data);
        if (this._notices.size > MAX_REMEMBERED_NOTICES) this._notices.delete(this._notices.keys().next().value);
        break;
      }
      default:
        break;
    }
    this._emit(name, data);
  }

  /**
   * Stops this tab. `relay`: the session ended for everyone (the leader's
   * client stopped) — tell the others, and keep the lock and the channel so
   * a tab opened later with the same token learns it at once.
   */
  _finish(stopped, relay = false) {
    if (this._stopped) return;
    this._stopped = true;
    const data = { reason: String(stopped?.reason ?? "closed"), code: stopped?.code ?? null };
    this._clearLogoutTimer();
    for (const [, resolve] of this._logoutWaiters) resolve(data.reason === "logged_out");
    this._logoutWaiters.clear();
    this._pending.clear();
    if (relay) {
      this._final = { announce: this._final?.announce ?? null, stopped: data };
      this._post({ kind: "event", name: "stopped", data });
    } else {
      this._abort?.abort();
      this._release?.();
      this._channel?.close();
      this._channel = null;
      this._page?.removeEventListener?.("pagehide", this._onPageHide);
    }
    this._client = null;
    if (this._connectivity !== "offline") {
      this._connectivity = "offline";
      this._connectivityDetail = { state: "offline", cause: null };
      this._emit("connectivity", "offline", this._connectivityDetail);
    }
    this._emit("stopped", data);
  }

  _clearLogoutTimer() {
    if (this._logoutTimer !== null) {
      this._timers.clearTimeout(this._logoutTimer);
      this._logoutTimer = null;
    }
  }
}
