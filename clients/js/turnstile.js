// turnstile browser SDK: one agent's WebSocket to a turnstile broker.
//
// Dependency-free ES module. It keeps the socket alive for a whole shift:
// app-level pings every heartbeat, dead-socket detection within two
// heartbeats, reconnection with exponential backoff and full jitter, session
// resume with the same connect token, and it stops for good when the broker
// says the session is over (forced logout, logout, final close codes).
// The wire contract is docs/protocol.md; the API is docs/clients.md.
// Sharing one socket among a browser's tabs is tabs.js.

import { Emitter } from "./emitter.js";
import { connectAcrossTabs } from "./tabs.js";

/**
 * Close codes after which reconnecting cannot help (docs/protocol.md). 4409
 * (`sockets_elsewhere`) is not one: a dead node's sockets stop counting once
 * the cluster declares it dead, so the SDK backs off and retries.
 */
export const FINAL_CLOSE_CODES = Object.freeze([4000, 4001, 4002, 4003, 4004, 4401, 4403]);

/** Defaults of every option that has one. */
export const DEFAULTS = Object.freeze({
  /** Ceiling of the first reconnect delay; doubles per failed attempt. */
  initialDelayMs: 500,
  /** The largest reconnect delay ceiling. */
  maxDelayMs: 30_000,
  /** Reconnect attempts in a row without a welcome before giving up. */
  maxAttempts: Infinity,
  /** How long a new socket may take to be welcomed. */
  connectTimeoutMs: 10_000,
  /** Heartbeat used until the first welcome names the broker's. */
  heartbeatMs: 15_000,
  /** How long logout() waits for the broker to confirm. */
  logoutTimeoutMs: 5_000,
});

/** What the broker tells people on forced logouts (used when a close code arrives without its frame). */
const CLOSE_REASONS = {
  4001: ["superseded", "Another user has logged with your credentials. Multiple logins not allowed."],
  4002: ["station_changed", "Your connection has been dropped due to a subsequent log on to a different station."],
  4003: ["evicted", "You have been logged out by an administrator."],
};

/** Notice ids remembered for de-duplication (the broker keeps at most 32 per session). */
const MAX_REMEMBERED_NOTICES = 256;

const OPEN = 1;
const CONNECTING = 0;

/**
 * The delay before reconnect attempt `attempt` (0-based): "full jitter",
 * a uniform random value in [0, min(maxDelayMs, initialDelayMs * 2^attempt)).
 * Spreading reconnects over the whole window keeps thousands of agents
 * dropped by one network blip from returning at the same instant.
 */
export function backoffDelay(attempt, initialDelayMs = DEFAULTS.initialDelayMs,
  maxDelayMs = DEFAULTS.maxDelayMs, random = Math.random) {
  const exp = Math.min(Math.max(0, attempt), 40);
  const ceiling = Math.min(maxDelayMs, initialDelayMs * 2 ** exp);
  const r = Math.min(Math.max(random(), 0), 1);
  return Math.min(Math.floor(r * ceiling), Math.max(0, Math.ceil(ceiling) - 1));
}

/**
 * Opens an agent connection. `url` is the broker's WebSocket endpoint
 * (`ws://host:7700/v1/ws`), `token` the connect token from the login
 * service's Claim. Returns the client; it connects at once — in a browser,
 * unless another tab of this session already holds the socket
 * (`shareAcrossTabs`, tabs.js).
 */
export function connect(url, token, options = {}) {
  checkedOptions(url, token, options);
  return connectAcrossTabs(url, token, options, (own) => new TurnstileClient(url, token, own))
    ?? new TurnstileClient(url, token, options);
}

/** The options with their defaults; throws a TypeError naming a bad argument. */
function checkedOptions(url, token, options) {
  if (typeof url !== "string" || url === "") throw new TypeError("turnstile: url must be a non-empty string");
  if (typeof token !== "string" || token === "") throw new TypeError("turnstile: token must be a non-empty string");
  const opts = { ...DEFAULTS, ...options };
  for (const k of ["initialDelayMs", "maxDelayMs", "connectTimeoutMs", "heartbeatMs", "logoutTimeoutMs"]) {
    if (!(typeof opts[k] === "number" && opts[k] > 0)) throw new TypeError(`turnstile: options.${k} must be a positive number`);
  }
  if (!(opts.maxAttempts >= 0)) throw new TypeError("turnstile: options.maxAttempts must be >= 0 (Infinity allowed)");
  if (typeof (opts.WebSocket ?? globalThis.WebSocket) !== "function") {
    throw new TypeError("turnstile: no WebSocket here; pass options.WebSocket (e.g. from the 'ws' package)");
  }
  return opts;
}

/** One agent's connection to the broker. Use {@link connect}. */
export class TurnstileClient extends Emitter {
  constructor(url, token, options = {}) {
    super();
    const opts = checkedOptions(url, token, options);
    const WS = opts.WebSocket ?? globalThis.WebSocket;
    const t = opts.timers ?? {};
    this._timers = {
      setTimeout: t.setTimeout ?? ((fn, ms) => globalThis.setTimeout(fn, ms)),
      clearTimeout: t.clearTimeout ?? ((id) => globalThis.clearTimeout(id)),
      now: t.now ?? (() => Date.now()),
    };
    this._opts = opts;
    this._WS = WS;
    this._random = opts.random ?? Math.random;
    this._url = url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);

    this._ws = null; // the current socket, or null between sockets
    this._welcomed = false; // the current socket got its welcome
    this._stopped = false;
    this._connectivity = "offline";
    this._connectivityCause = null; // "network" | "server" | null
    this._connectivityKey = JSON.stringify({ state: "offline", cause: null }); // the last detail emitted
    this._socketState = "offline"; // what the socket alone says
    this._serverDegraded = null; // {cause, sinceMs} while the broker says it is degraded
    this._session = null; // the last welcome
    this._attempt = 0; // reconnects in a row without a welcome
    this._heartbeatMs = opts.heartbeatMs;
    this._lastRx = 0;
    this._pingId = 0;
    this._pingSentAt = new Map();
    this._rttMs = null;
    this._timer = { connect: null, ping: null, dead: null, retry: null, logout: null };

    this._notices = new Map(); // id -> JSON of the last one emitted
    this._pendingStatus = null; // set while offline, sent after the next welcome
    this._pendingAcks = new Set();
    this._watching = false;
    this._loggingOut = false;
    this._logoutWaiters = [];

    const network = opts.network ?? (typeof globalThis.window === "object" ? globalThis.window : null);
    if (network && typeof network.addEventListener === "function") {
      this._network = network;
      this._onNetworkOnline = () => this.reconnectNow();
      network.addEventListener("online", this._onNetworkOnline);
    }
    this._open(true);
  }

  // --- public API ---------------------------------------------------------

  /** "online" | "degraded" | "offline". */
  get connectivity() {
    return this._connectivity;
  }

  /**
   * Why the connectivity is degraded: "network" when the SDK lost the
   * socket itself, "server" when the broker said it cannot vouch for the
   * session right now; null when online or offline.
   */
  get connectivityCause() {
    return this._connectivityCause;
  }

  /** The last welcome frame (session_id, login, station, generation, ...), or null. */
  get session() {
    return this._session;
  }

  /** True once the client stopped for good. */
  get stopped() {
    return this._stopped;
  }

  /** Round trip of the last answered ping, in ms, or null. */
  get rttMs() {
    return this._rttMs;
  }

  /**
   * Sets the agent's presence status ("available", "away", ...). Sent now
   * when online, else after the next welcome. Returns true if sent now.
   */
  setStatus(status) {
    if (typeof status !== "string" || status === "") throw new TypeError("turnstile: status must be a non-empty string");
    this._pendingStatus = status;
    if (this._send({ type: "status", status })) {
      this._pendingStatus = null;
      return true;
    }
    return false;
  }

  /** Acknowledges a notice so the broker stops re-delivering it. Returns true if sent now. */
  ack(noticeId) {
    if (typeof noticeId !== "string" || noticeId === "") throw new TypeError("turnstile: noticeId must be a non-empty string");
    this._pendingAcks.add(noticeId);
    if (this._send({ type: "ack", notice_id: noticeId })) {
      this._pendingAcks.delete(noticeId);
      return true;
    }
    return false;
  }

  /**
   * Subscribes this socket (and every later one) to the tenant's presence
   * events (supervisors and admins only; others get an `error` "forbidden").
   */
  watchPresence() {
    this._watching = true;
    this._send({ type: "watch_presence" });
  }

  /**
   * Ends the session (LOGGED_OUT). Resolves true when the broker confirmed,
   * false when it could not be told (offline, or no answer within
   * logoutTimeoutMs) — then the login service should Release the session.
   * The client stops either way.
   */
  logout() {
    if (this._stopped) return Promise.resolve(false);
    return new Promise((resolve) => {
      this._logoutWaiters.push(resolve);
      this._loggingOut = true;
      if (!this._send({ type: "logout" })) {
        this._finish("logout_unconfirmed");
        return;
      }
      this._timer.logout = this._timers.setTimeout(() => {
        this._timer.logout = null;
        this._finish("logout_unconfirmed");
      }, this._opts.logoutTimeoutMs);
    });
  }

  /** Closes the socket and stops reconnecting. The session stays live for its grace period. */
  close() {
    this._finish("closed");
  }

  /** Skips the current backoff wait (e.g. when the browser reports it is online again). */
  reconnectNow() {
    if (this._stopped || this._timer.retry === null) return;
    this._clear("retry");
    this._open(false);
  }

  // --- connection lifecycle -------------------------------------------------

  _open(first) {
    if (this._stopped) return;
    let ws;
    try {
      ws = new this._WS(this._url);
    } catch (e) {
      if (first) throw e;
      this._emit("error", { code: "connect_failed", message: String(e && e.message ? e.message : e) });
      this._finish("connect_failed");
      return;
    }
    this._ws = ws;
    this._welcomed = false;
    ws.onopen = () => {
      if (ws === this._ws) this._lastRx = this._timers.now();
    };
    ws.onmessage = (ev) => this._onMessage(ws, ev && ev.data);
    ws.onerror = () => {}; // a close event follows
    ws.onclose = (ev) => this._onClose(ws, ev ? ev.code : 1006);
    this._timer.connect = this._timers.setTimeout(() => {
      this._timer.connect = null;
      if (ws === this._ws) this._lost("connect_timeout");
    }, this._opts.connectTimeoutMs);
  }

  _onMessage(ws, data) {
    if (ws !== this._ws || this._stopped) return;
    this._lastRx = this._timers.now();
    if (typeof data !== "string") return;
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      this._emit("error", { code: "bad_frame", message: "the broker sent a frame that is not JSON" });
      return;
    }
    if (msg === null || typeof msg !== "object") return;
    switch (msg.type) {
      case "welcome":
        this._onWelcome(ws, msg);
        break;
      case "pong": {
        const sent = this._pingSentAt.get(msg.id);
        if (sent !== undefined) {
          this._rttMs = this._timers.now() - sent;
          this._pingSentAt.delete(msg.id);
        }
        break;
      }
      case "notice":
        this._onNotice(msg.notice);
        break;
      case "presence":
        this._emit("presence", msg);
        break;
      case "gap":
        this._emit("presenceGap", msg);
        break;
      case "error":
        this._emit("error", { code: String(msg.code), message: String(msg.message ?? "") });
        break;
      case "forced_logout": {
        const info = { reason: String(msg.reason ?? ""), message: String(msg.message ?? ""), by: msg.by ?? null };
        this._finish("forced_logout", () => this._emit("forcedLogout", info));
        break;
      }
      case "logged_out":
        this._finish("logged_out", () => this._emit("loggedOut", {}));
        break;
      case "connectivity":
        this._onServerConnectivity(msg);
        break;
      case "reconnect": {
        // The node is draining: go elsewhere after after_ms, without counting
        // this as a failure.
        const after = Number(msg.after_ms);
        const delay = Number.isFinite(after) ? Math.min(Math.max(0, after), this._opts.maxDelayMs) : 0;
        this._lost("node_draining", delay);
        break;
      }
      default:
        break; // newer broker, unknown frame: ignore
    }
  }

  _onWelcome(ws, msg) {
    this._clear("connect");
    this._welcomed = true;
    this._attempt = 0;
    this._session = msg;
    const hb = Number(msg.heartbeat_ms);
    if (Number.isFinite(hb) && hb > 0) this._heartbeatMs = hb;
    this._armPing();
    this._armDead(2 * this._heartbeatMs);
    // A degraded broker says so right after the welcome; a healthy one
    // says nothing, so each socket starts out trusting its node.
    this._serverDegraded = null;
    this._setConnectivity("online");
    if (this._watching) this._send({ type: "watch_presence" });
    if (this._pendingStatus !== null) this.setStatus(this._pendingStatus);
    for (const id of [...this._pendingAcks]) this.ack(id);
    if (ws === this._ws) this._emit("welcome", msg);
  }

  /** The broker's own word on whether it can vouch for the session. */
  _onServerConnectivity(msg) {
    if (msg.state === "degraded") {
      const since = Number(msg.since_ms);
      this._serverDegraded = {
        cause: typeof msg.cause === "string" ? msg.cause : "unknown",
        sinceMs: Number.isFinite(since) ? since : null,
      };
    } else if (msg.state === "ok") {
      this._serverDegraded = null;
    } else {
      return; // newer broker, unknown state: ignore
    }
    this._setConnectivity(this._socketState);
  }

  _onNotice(notice) {
    if (!notice || typeof notice.id !== "string") return;
    // Delivery is at-least-once: every reconnect re-sends un-acked notices.
    const key = JSON.stringify(notice);
    if (this._notices.get(notice.id) === key) return;
    this._notices.delete(notice.id);
    this._notices.set(notice.id, key);
    if (this._notices.size > MAX_REMEMBERED_NOTICES) {
      this._notices.delete(this._notices.keys().next().value);
    }
    this._emit("notice", notice);
  }

  _onClose(ws, code) {
    if (ws !== this._ws || this._stopped) return;
    if (FINAL_CLOSE_CODES.includes(code)) {
      if (code === 4000) {
        this._finish("logged_out", () => this._emit("loggedOut", {}), code);
      } else if (CLOSE_REASONS[code]) {
        const [reason, message] = CLOSE_REASONS[code];
        this._finish("forced_logout", () => this._emit("forcedLogout", { reason, message, by: null }), code);
      } else {
        this._finish("rejected", null, code);
      }
      return;
    }
    this._lost(`closed_${code}`);
  }

  /** The current socket is gone or presumed dead: reconnect unless stopping. */
  _lost(why, fixedDelayMs) {
    if (this._stopped) return;
    this._dropSocket();
    if (this._loggingOut) {
      this._finish("logout_unconfirmed");
      return;
    }
    this._setConnectivity("degraded");
    if (fixedDelayMs === undefined && this._attempt >= this._opts.maxAttempts) {
      this._emit("error", { code: "reconnect_exhausted", message: `gave up after ${this._attempt} reconnect attempts` });
      this._finish("gave_up");
      return;
    }
    let delayMs = fixedDelayMs;
    if (delayMs === undefined) {
      delayMs = backoffDelay(this._attempt, this._opts.initialDelayMs, this._opts.maxDelayMs, this._random);
      this._attempt += 1;
    }
    this._emit("reconnecting", { attempt: this._attempt, delayMs, reason: why });
    if (this._stopped) return; // a listener closed us
    this._timer.retry = this._timers.setTimeout(() => {
      this._timer.retry = null;
      this._open(false);
    }, delayMs);
  }

  /** Stops for good; `announce` emits the event that explains why, before "offline". */
  _finish(reason, announce = null, code = null) {
    if (this._stopped) return;
    this._stopped = true;
    this._dropSocket();
    this._clear("retry");
    this._clear("logout");
    if (this._network) this._network.removeEventListener?.("online", this._onNetworkOnline);
    if (announce) announce();
    const waiters = this._logoutWaiters;
    this._logoutWaiters = [];
    for (const resolve of waiters) resolve(reason === "logged_out");
    this._setConnectivity("offline");
    this._emit("stopped", { reason, code });
  }

  _dropSocket() {
    this._clear("connect");
    this._clear("ping");
    this._clear("dead");
    this._pingSentAt.clear();
    const ws = this._ws;
    this._ws = null;
    this._welcomed = false;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
    try {
      if (ws.readyState === OPEN || ws.readyState === CONNECTING) ws.close(1000, "client closing");
    } catch {
      // already closing
    }
  }

  // --- heartbeats -----------------------------------------------------------

  _armPing() {
    this._timer.ping = this._timers.setTimeout(() => {
      this._timer.ping = null;
      const id = ++this._pingId;
      if (this._send({ type: "ping", id })) {
        this._pingSentAt.set(id, this._timers.now());
        if (this._pingSentAt.size > 8) this._pingSentAt.delete(this._pingSentAt.keys().next().value);
      }
      if (this._ws && this._welcomed) this._armPing();
    }, this._heartbeatMs);
  }

  /** Fires when nothing arrived for two heartbeats; re-arms itself while frames keep coming. */
  _armDead(inMs) {
    this._timer.dead = this._timers.setTimeout(() => {
      this._timer.dead = null;
      if (!this._ws || !this._welcomed) return;
      const limit = 2 * this._heartbeatMs;
      const silent = this._timers.now() - this._lastRx;
      if (silent >= limit) {
        this._lost("heartbeat_timeout");
      } else {
        this._armDead(limit - silent);
      }
    }, inMs);
  }

  // --- helpers --------------------------------------------------------------

  _send(obj) {
    const ws = this._ws;
    if (!ws || !this._welcomed || ws.readyState !== OPEN) return false;
    try {
      ws.send(JSON.stringify(obj));
      return true;
    } catch {
      return false;
    }
  }

  _clear(name) {
    if (this._timer[name] !== null) {
      this._timers.clearTimeout(this._timer[name]);
      this._timer[name] = null;
    }
  }

  /**
   * Records what the socket says (`online`, `degraded` while reconnecting,
   * `offline`) and emits `connectivity` with (state, detail) when either
   * changes. A welcomed socket on a broker that said it is degraded is
   * `degraded` with cause "server"; a lost socket is cause "network" (the
   * broker cannot be heard then, whatever it said before).
   */
  _setConnectivity(socketState) {
    this._socketState = socketState;
    let state = socketState;
    let cause = socketState === "degraded" ? "network" : null;
    const detail = { state, cause };
    if (socketState === "online" && this._serverDegraded) {
      state = detail.state = "degraded";
      cause = detail.cause = "server";
      detail.serverCause = this._serverDegraded.cause;
      detail.sinceMs = this._serverDegraded.sinceMs;
    }
    const key = JSON.stringify(detail);
    if (this._connectivityKey === key) return;
    this._connectivityKey = key;
    this._connectivity = state;
    this._connectivityCause = cause;
    this._emit("connectivity", state, detail);
  }
}
