import { test } from "node:test";
import assert from "node:assert/strict";

import { connect, TurnstileClient } from "../turnstile.js";
import { setup, fakeWebSocketClass, fakeClock, welcomeFrame, TOKEN, WS_URL } from "./helpers.js";

test("connects at once with the token in the query string, URL-encoded", () => {
  const { sockets, client } = setup();
  assert.equal(sockets.length, 1);
  assert.equal(sockets[0].url, `${WS_URL}?token=${encodeURIComponent(TOKEN)}`);
  assert.equal(client.connectivity, "offline");
  assert.ok(client instanceof TurnstileClient);
});

test("appends the token with & when the URL already has a query", () => {
  const { FakeWebSocket, sockets } = fakeWebSocketClass();
  connect("ws://h/v1/ws?x=1", "t", { WebSocket: FakeWebSocket, timers: fakeClock() });
  assert.equal(sockets[0].url, "ws://h/v1/ws?x=1&token=t");
});

test("welcome: emitted with the frame, connectivity goes online, session is kept", () => {
  const { welcome, of, client, events } = setup();
  welcome();
  assert.deepEqual(of("welcome"), [welcomeFrame()]);
  assert.deepEqual(of("connectivity"), ["online"]);
  assert.equal(client.connectivity, "online");
  assert.equal(client.session.session_id, "5f0c");
  // online is announced before the welcome, so a welcome handler sees it
  assert.deepEqual(events.map(([n]) => n), ["connectivity", "welcome"]);
});

test("nothing is sent before the welcome; sends wait for it", () => {
  const { client, last, welcome } = setup();
  last().open();
  assert.equal(client.setStatus("away"), false);
  assert.deepEqual(last().sent, []);
  welcome();
  assert.deepEqual(last().sentOf("status"), [{ type: "status", status: "away" }]);
});

test("setStatus sends a status frame when online", () => {
  const { client, welcome } = setup();
  const ws = welcome();
  assert.equal(client.setStatus("available"), true);
  assert.deepEqual(ws.sent, [{ type: "status", status: "available" }]);
  assert.throws(() => client.setStatus(""), TypeError);
});

test("bad arguments and a missing WebSocket are reported up front", () => {
  const { FakeWebSocket } = fakeWebSocketClass();
  assert.throws(() => connect("", "t", { WebSocket: FakeWebSocket }), /url/);
  assert.throws(() => connect("ws://h", "", { WebSocket: FakeWebSocket }), /token/);
  assert.throws(() => connect("ws://h", "t", { WebSocket: FakeWebSocket, maxDelayMs: 0 }), /maxDelayMs/);
  if (typeof globalThis.WebSocket !== "function") {
    assert.throws(() => connect("ws://h", "t"), /WebSocket/);
  }
});

test("server error frames become error events; unknown frames and junk do not break anything", () => {
  const { welcome, of, last, client } = setup();
  welcome();
  last().receive({ type: "error", code: "rejected", message: "status: session ended" });
  last().receive({ type: "from_the_future", x: 1 });
  last().receive("not json");
  last().receive("42");
  assert.deepEqual(of("error"), [
    { code: "rejected", message: "status: session ended" },
    { code: "bad_frame", message: "the broker sent a frame that is not JSON" },
  ]);
  assert.equal(client.connectivity, "online");
});

test("on returns an unsubscribe function; off removes; a throwing listener does not stop others", () => {
  const { client, welcome, listenerErrors } = setup();
  const seen = [];
  const un = client.on("welcome", () => seen.push("a"));
  client.on("welcome", () => {
    throw new Error("listener bug");
  });
  const b = () => seen.push("b");
  client.on("welcome", b);
  un();
  client.off("welcome", b);
  client.on("welcome", () => seen.push("c"));
  welcome();
  assert.deepEqual(seen, ["c"]);
  assert.equal(listenerErrors.length, 1);
  assert.throws(() => client.on("welcome", "nope"), TypeError);
});
