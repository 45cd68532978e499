import { test } from "node:test";
import assert from "node:assert/strict";

import { setup, TOKEN, WS_URL } from "./helpers.js";

test("reconnects with the same token and reports the resumed welcome", () => {
  const { clock, welcome, of, last, sockets, client } = setup();
  welcome();
  last().serverClose(1001); // heartbeat timeout on the server side
  assert.equal(client.connectivity, "degraded");
  clock.advance(of("reconnecting")[0].delayMs);
  assert.equal(sockets.length, 2);
  assert.equal(sockets[1].url, `${WS_URL}?token=${encodeURIComponent(TOKEN)}`);
  welcome({ resumed: true });
  assert.equal(client.connectivity, "online");
  assert.deepEqual(of("connectivity"), ["online", "degraded", "online"]);
  assert.deepEqual(of("welcome").map((w) => w.resumed), [false, true]);
});

test("status, acks and the presence watch set while offline are sent after the next welcome", () => {
  const { clock, welcome, of, last, client } = setup();
  welcome();
  client.watchPresence();
  last().serverClose(1006);
  assert.equal(client.setStatus("away"), false);
  assert.equal(client.ack("n1"), false);
  clock.advance(of("reconnecting")[0].delayMs);
  const ws = welcome({ resumed: true });
  assert.deepEqual(ws.sent, [
    { type: "watch_presence" },
    { type: "status", status: "away" },
    { type: "ack", notice_id: "n1" },
  ]);
  // sent once: a further reconnect does not repeat status or acks
  ws.serverClose(1006);
  clock.advance(of("reconnecting").at(-1).delayMs);
  assert.deepEqual(welcome({ resumed: true }).sent, [{ type: "watch_presence" }]);
});

test("reconnect frame (node draining): waits after_ms, not the backoff, and does not count as a failure", () => {
  const { clock, welcome, of, last, sockets } = setup({ random: () => 0.999 });
  welcome();
  const ws = last();
  ws.receive({ type: "reconnect", after_ms: 350 });
  ws.serverClose(1012, "node restarting"); // ignored: already detached
  assert.deepEqual(of("reconnecting"), [{ attempt: 0, delayMs: 350, reason: "node_draining" }]);
  clock.advance(349);
  assert.equal(sockets.length, 1);
  clock.advance(1);
  assert.equal(sockets.length, 2);
  welcome({ resumed: true });
  assert.equal(of("connectivity").at(-1), "online");
});

test("an absurd after_ms is capped at maxDelayMs", () => {
  const { welcome, of, last } = setup({ maxDelayMs: 5000 });
  welcome();
  last().receive({ type: "reconnect", after_ms: 1e12 });
  assert.equal(of("reconnecting")[0].delayMs, 5000);
});

test("close codes that mean 'try again' reconnect", () => {
  for (const code of [1000, 1001, 1006, 1008, 1009, 1011, 1012, 4429]) {
    const { clock, welcome, of, last, sockets, client } = setup();
    welcome();
    last().serverClose(code);
    assert.equal(client.connectivity, "degraded", `code ${code}`);
    assert.equal(of("reconnecting")[0].reason, `closed_${code}`);
    clock.advance(of("reconnecting")[0].delayMs);
    assert.equal(sockets.length, 2, `code ${code}`);
  }
});
