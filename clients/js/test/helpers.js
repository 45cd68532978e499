// Test doubles: a fake clock (timers + now that advance together) and a fake
// WebSocket whose "server side" the test drives by hand. Node 20 has no
// global WebSocket, and real timers would make the tests slow and flaky.

import { connect } from "../turnstile.js";

/** Timers that only run when the test advances time. */
export function fakeClock(start = 1_000_000) {
  let now = start;
  let seq = 0;
  const timers = new Map();
  return {
    now: () => now,
    setTimeout(fn, ms = 0) {
      const id = ++seq;
      timers.set(id, { at: now + Math.max(0, ms), fn });
      return id;
    },
    clearTimeout(id) {
      timers.delete(id);
    },
    /** Runs every timer due within `ms`, in time order, moving `now` along. */
    advance(ms) {
      const end = now + ms;
      for (;;) {
        let nextId = null;
        let next = null;
        for (const [id, t] of timers) {
          if (t.at <= end && (next === null || t.at < next.at || (t.at === next.at && id < nextId))) {
            next = t;
            nextId = id;
          }
        }
        if (next === null) break;
        timers.delete(nextId);
        now = next.at;
        next.fn();
      }
      now = end;
    },
    /** Delays (from now) of the pending timers, sorted. */
    pending() {
      return [...timers.values()].map((t) => t.at - now).sort((a, b) => a - b);
    },
  };
}

/** A WebSocket class whose instances the test opens, feeds and closes. */
export function fakeWebSocketClass() {
  const sockets = [];
  class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.closedByClient = null;
      this.onopen = this.onmessage = this.onerror = this.onclose = null;
      sockets.push(this);
    }
    send(data) {
      if (this.readyState !== 1) throw new Error("InvalidStateError: not open");
      this.sent.push(JSON.parse(data));
    }
    close(code, reason) {
      this.closedByClient = { code, reason };
      this.readyState = 3;
    }
    // --- the server's side ---
    open() {
      this.readyState = 1;
      this.onopen?.({});
    }
    receive(frame) {
      this.onmessage?.({ data: typeof frame === "string" ? frame : JSON.stringify(frame) });
    }
    serverClose(code = 1006, reason = "") {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
    /** Frames of one type the client sent. */
    sentOf(type) {
      return this.sent.filter((f) => f.type === type);
    }
  }
  return { FakeWebSocket, sockets };
}

export const WS_URL = "ws://broker.test/v1/ws";
export const TOKEN = "tok.en+/=";

export function welcomeFrame(extra = {}) {
  return {
    type: "welcome", session_id: "5f0c", tenant: "acme", login: "ana", station: "desk-4",
    generation: 1, resumed: false, heartbeat_ms: 1000, grace_ms: 60000, ...extra,
  };
}

/**
 * A client over fakes, recording every event it emits in `events` as
 * [name, data] pairs. `random` defaults to 0.5.
 */
export function setup(options = {}) {
  const clock = fakeClock();
  const { FakeWebSocket, sockets } = fakeWebSocketClass();
  const listenerErrors = [];
  const client = connect(WS_URL, TOKEN, {
    WebSocket: FakeWebSocket,
    timers: clock,
    random: () => 0.5,
    onListenerError: (e) => listenerErrors.push(e),
    ...options,
  });
  const events = [];
  for (const name of ["welcome", "notice", "forcedLogout", "connectivity", "presence", "loggedOut",
    "error", "reconnecting", "stopped"]) {
    client.on(name, (data) => events.push([name, data]));
  }
  const last = () => sockets[sockets.length - 1];
  /** Opens the latest socket and welcomes it. */
  const welcome = (extra = {}) => {
    const ws = last();
    ws.open();
    ws.receive(welcomeFrame(extra));
    return ws;
  };
  const of = (name) => events.filter(([n]) => n === name).map(([, d]) => d);
  return { client, clock, sockets, events, last, welcome, of, listenerErrors };
}
