import { test } from "node:test";
import assert from "node:assert/strict";

import { setup } from "./helpers.js";

const HB = 1000; // heartbeat_ms in welcomeFrame()

test("pings every heartbeat_ms from the welcome, with increasing ids", () => {
  const { clock, welcome, last } = setup();
  const ws = welcome();
  clock.advance(HB - 1);
  assert.equal(ws.sentOf("ping").length, 0);
  clock.advance(1);
  assert.deepEqual(ws.sentOf("ping"), [{ type: "ping", id: 1 }]);
  ws.receive({ type: "pong", id: 1 });
  clock.advance(HB);
  ws.receive({ type: "pong", id: 2 });
  clock.advance(HB);
  assert.deepEqual(ws.sentOf("ping").map((p) => p.id), [1, 2, 3]);
  assert.equal(last(), ws);
});

test("the heartbeat comes from the welcome, not the default", () => {
  const { clock, welcome } = setup({ heartbeatMs: 15000 });
  const ws = welcome({ heartbeat_ms: 250 });
  clock.advance(250);
  ws.receive({ type: "pong", id: 1 });
  clock.advance(250);
  assert.equal(ws.sentOf("ping").length, 2);
});

test("no pings before the welcome", () => {
  const { clock, last } = setup();
  last().open();
  clock.advance(5000);
  assert.equal(last().sent.length, 0);
});

test("pong measures the round trip", () => {
  const { clock, welcome, client } = setup();
  const ws = welcome();
  clock.advance(HB);
  clock.advance(37);
  ws.receive({ type: "pong", id: 1 });
  assert.equal(client.rttMs, 37);
});

test("a silent socket is dead at exactly two heartbeats: degraded, closed, reconnect scheduled", () => {
  const { clock, welcome, of, sockets, client } = setup();
  const ws = welcome();
  clock.advance(2 * HB - 1);
  assert.equal(client.connectivity, "online");
  assert.equal(sockets.length, 1);
  clock.advance(1);
  assert.equal(client.connectivity, "degraded");
  assert.deepEqual(of("connectivity"), ["online", "degraded"]);
  assert.equal(ws.closedByClient.code, 1000);
  assert.equal(ws.onmessage, null, "the dead socket is detached");
  const [r] = of("reconnecting");
  assert.equal(r.reason, "heartbeat_timeout");
  assert.equal(r.attempt, 1);
  clock.advance(r.delayMs);
  assert.equal(sockets.length, 2, "a new socket is opened after the backoff delay");
});

test("any frame keeps the socket alive; detection counts from the last one", () => {
  const { clock, welcome, client } = setup();
  const ws = welcome();
  clock.advance(1500);
  ws.receive({ type: "pong", id: 1 });
  clock.advance(1999); // 3499 after welcome, 1999 after the last frame
  assert.equal(client.connectivity, "online");
  clock.advance(1);
  assert.equal(client.connectivity, "degraded");
});

test("pongs answering the pings keep a healthy socket online indefinitely", () => {
  const { clock, welcome, client, sockets } = setup();
  const ws = welcome();
  for (let i = 1; i <= 50; i++) {
    clock.advance(HB);
    ws.receive({ type: "pong", id: i });
  }
  assert.equal(client.connectivity, "online");
  assert.equal(sockets.length, 1);
  assert.equal(ws.sentOf("ping").length, 50);
});

test("a socket that is never welcomed times out after connectTimeoutMs", () => {
  const { clock, last, of, sockets } = setup({ connectTimeoutMs: 3000 });
  last().open();
  clock.advance(2999);
  assert.equal(sockets.length, 1);
  clock.advance(1);
  assert.equal(of("reconnecting")[0].reason, "connect_timeout");
  assert.equal(sockets[0].closedByClient.code, 1000);
});

test("frames from a dropped socket are ignored", () => {
  const { clock, welcome, of } = setup();
  const ws = welcome();
  clock.advance(2 * HB); // dead
  ws.receive({ type: "notice", notice: { id: "n1", text: "late" } });
  ws.serverClose(1006);
  assert.deepEqual(of("notice"), []);
  assert.equal(of("reconnecting").length, 1);
});
