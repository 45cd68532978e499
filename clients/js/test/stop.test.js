import { test } from "node:test";
import assert from "node:assert/strict";

import { setup } from "./helpers.js";

const SUPERSEDED = "Another user has logged with your credentials. Multiple logins not allowed.";
const STATION_CHANGED = "Your connection has been dropped due to a subsequent log on to a different station.";

/** Asserts the client stopped for good: offline, and no socket is ever opened again. */
function assertStoppedForGood(t, count) {
  assert.equal(t.client.connectivity, "offline");
  assert.equal(t.client.stopped, true);
  t.clock.advance(10 * 60_000);
  assert.equal(t.sockets.length, count, "no reconnect");
  assert.deepEqual(t.clock.pending(), [], "no timer left behind");
}

for (const [reason, message, code] of [
  ["superseded", SUPERSEDED, 4001],
  ["station_changed", STATION_CHANGED, 4002],
  ["evicted", "Password changed, please sign in again", 4003],
  ["expired", "Your session has expired. Please log in again.", 4004],
]) {
  test(`forced_logout (${reason}) then close ${code}: event with the message, never reconnects`, () => {
    const t = setup();
    t.welcome();
    const by = { client: "web", station: "desk-9", at_ms: 1 };
    t.last().receive({ type: "forced_logout", reason, message, by });
    t.last().serverClose(code);
    assert.deepEqual(t.of("forcedLogout"), [{ reason, message, by }]);
    assert.deepEqual(t.of("stopped"), [{ reason: "forced_logout", code: null }]);
    assert.deepEqual(t.events.slice(-3).map(([n]) => n), ["forcedLogout", "connectivity", "stopped"]);
    assert.equal(t.of("reconnecting").length, 0);
    assertStoppedForGood(t, 1);
  });
}

test("a forced logout also stops a client that was degraded in between", () => {
  const t = setup();
  t.welcome();
  t.last().serverClose(1006);
  t.clock.advance(t.of("reconnecting")[0].delayMs);
  // the reconnect finds the session ended: the broker answers forced_logout
  t.last().open();
  t.last().receive({ type: "forced_logout", reason: "superseded", message: SUPERSEDED, by: null });
  assert.equal(t.of("forcedLogout").length, 1);
  assertStoppedForGood(t, 2);
});

test("logged_out then close 4000: loggedOut, never reconnects", () => {
  const t = setup();
  t.welcome();
  t.last().receive({ type: "logged_out" });
  t.last().serverClose(4000);
  assert.equal(t.of("loggedOut").length, 1);
  assert.deepEqual(t.of("stopped"), [{ reason: "logged_out", code: null }]);
  assertStoppedForGood(t, 1);
});

for (const code of [4000, 4001, 4002, 4003, 4004, 4401, 4403]) {
  test(`close ${code} without a frame is final too`, () => {
    const t = setup();
    t.welcome();
    t.last().serverClose(code);
    assert.equal(t.of("stopped")[0].code, code);
    if (code === 4000) assert.equal(t.of("loggedOut").length, 1);
    if (code >= 4001 && code <= 4003) assert.equal(t.of("forcedLogout").length, 1);
    if (code === 4001) assert.equal(t.of("forcedLogout")[0].message, SUPERSEDED);
    if (code === 4002) assert.equal(t.of("forcedLogout")[0].message, STATION_CHANGED);
    assertStoppedForGood(t, 1);
  });
}

test("invalid token at the handshake: error event then close 4401, no retry", () => {
  const t = setup();
  t.last().open();
  t.last().receive({ type: "error", code: "invalid_token", message: "token expired" });
  t.last().serverClose(4401);
  assert.deepEqual(t.of("error"), [{ code: "invalid_token", message: "token expired" }]);
  assert.deepEqual(t.of("stopped"), [{ reason: "rejected", code: 4401 }]);
  assertStoppedForGood(t, 1);
});

test("logout(): sends logout, resolves true on logged_out, stops", async () => {
  const t = setup();
  const ws = t.welcome();
  const p = t.client.logout();
  assert.deepEqual(ws.sentOf("logout"), [{ type: "logout" }]);
  ws.receive({ type: "logged_out" });
  assert.equal(await p, true);
  assertStoppedForGood(t, 1);
});

test("logout() resolves true on close 4000 alone", async () => {
  const t = setup();
  const ws = t.welcome();
  const p = t.client.logout();
  ws.serverClose(4000);
  assert.equal(await p, true);
});

test("logout() while offline resolves false and stops", async () => {
  const t = setup();
  t.welcome();
  t.last().serverClose(1006);
  assert.equal(await t.client.logout(), false);
  assert.deepEqual(t.of("stopped"), [{ reason: "logout_unconfirmed", code: null }]);
  assertStoppedForGood(t, 1);
});

test("logout() unanswered resolves false after logoutTimeoutMs; a drop meanwhile does not reconnect", async () => {
  const t = setup({ logoutTimeoutMs: 2000 });
  t.welcome();
  const p = t.client.logout();
  t.clock.advance(1999);
  assert.equal(t.client.stopped, false);
  t.clock.advance(1);
  assert.equal(await p, false);

  const u = setup();
  u.welcome();
  const q = u.client.logout();
  u.last().serverClose(1006);
  assert.equal(await q, false);
  assertStoppedForGood(u, 1);
});

test("close(): closes the socket with 1000, stops, and cancels a pending reconnect", () => {
  const t = setup();
  const ws = t.welcome();
  t.client.close();
  assert.equal(ws.closedByClient.code, 1000);
  assert.deepEqual(t.of("stopped"), [{ reason: "closed", code: null }]);
  assertStoppedForGood(t, 1);

  const u = setup();
  u.welcome();
  u.last().serverClose(1006);
  u.client.close();
  assertStoppedForGood(u, 1);
  assert.equal(u.client.setStatus("away"), false);
});

test("a listener may close the client from inside reconnecting", () => {
  const t = setup();
  t.welcome();
  t.client.on("reconnecting", () => t.client.close());
  t.last().serverClose(1006);
  assertStoppedForGood(t, 1);
});
