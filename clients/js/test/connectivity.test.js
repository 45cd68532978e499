// The `connectivity` event's cause: "network" when the SDK lost the socket
// itself, "server" when the broker said it cannot vouch for the session.

import { test } from "node:test";
import assert from "node:assert/strict";

import { setup } from "./helpers.js";

/** Every connectivity event as [state, detail]. */
function details(client) {
  const seen = [];
  client.on("connectivity", (state, detail) => seen.push([state, detail]));
  return seen;
}

const DEGRADED = { type: "connectivity", state: "degraded", cause: "redis_unreachable", since_ms: 1234 };

test("a degraded broker makes a welcomed client degraded with cause server, then online on ok", () => {
  const { client, welcome } = setup();
  const seen = details(client);
  const ws = welcome();
  ws.receive(DEGRADED);
  assert.equal(client.connectivity, "degraded");
  assert.equal(client.connectivityCause, "server");
  ws.receive({ type: "connectivity", state: "ok" });
  assert.equal(client.connectivity, "online");
  assert.equal(client.connectivityCause, null);
  assert.deepEqual(seen, [
    ["online", { state: "online", cause: null }],
    ["degraded", { state: "degraded", cause: "server", serverCause: "redis_unreachable", sinceMs: 1234 }],
    ["online", { state: "online", cause: null }],
  ]);
});

test("a lost socket is cause network; the next welcome starts from the broker's word again", () => {
  const { client, welcome, last, clock } = setup();
  const seen = details(client);
  welcome().receive(DEGRADED);
  last().serverClose(1006);
  assert.equal(client.connectivity, "degraded");
  assert.equal(client.connectivityCause, "network");
  clock.advance(1_000); // past the first backoff (250 ms with random 0.5)
  welcome(); // a healthy node says nothing after its welcome
  assert.equal(client.connectivity, "online");
  assert.deepEqual(seen.map(([, d]) => d.cause), [null, "server", "network", null]);
});

test("a changed server cause is announced; a repeated frame is not", () => {
  const { client, welcome } = setup();
  const seen = details(client);
  const ws = welcome();
  ws.receive({ ...DEGRADED, cause: "subscription_lost" });
  ws.receive({ ...DEGRADED, cause: "subscription_lost" });
  ws.receive(DEGRADED);
  assert.deepEqual(seen.map(([, d]) => d.serverCause), [undefined, "subscription_lost", "redis_unreachable"]);
});

test("listeners taking only the state keep working; unknown states are ignored", () => {
  const { client, welcome, of } = setup();
  const ws = welcome();
  ws.receive({ type: "connectivity", state: "sideways" });
  ws.receive(DEGRADED);
  ws.receive({ type: "connectivity", state: "ok" });
  assert.deepEqual(of("connectivity"), ["online", "degraded", "online"]);
});

test("stopping while the broker is degraded goes offline with no cause", () => {
  const { client, welcome } = setup();
  const seen = details(client);
  welcome().receive(DEGRADED);
  client.close();
  assert.equal(client.connectivity, "offline");
  assert.deepEqual(seen.at(-1), ["offline", { state: "offline", cause: null }]);
});
