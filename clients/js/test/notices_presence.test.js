import { test } from "node:test";
import assert from "node:assert/strict";

import { setup } from "./helpers.js";

const notice = (extra = {}) => ({
  id: "pw-2026-11-22", kind: "password_expiry", severity: "warning",
  text: "Your password expires in 3 days", data: { days: 3 }, expires_at_ms: 1795482315000, ...extra,
});

test("notice: emitted with the notice object", () => {
  const { welcome, of, last } = setup();
  welcome();
  last().receive({ type: "notice", notice: notice() });
  assert.deepEqual(of("notice"), [notice()]);
});

test("re-delivery after a reconnect is de-duplicated by id; a replacement with new content is not", () => {
  const { clock, welcome, of, last } = setup();
  welcome();
  last().receive({ type: "notice", notice: notice() });
  last().serverClose(1006);
  clock.advance(of("reconnecting")[0].delayMs);
  welcome({ resumed: true });
  last().receive({ type: "notice", notice: notice() }); // un-acked: the broker sends it again
  assert.equal(of("notice").length, 1);
  last().receive({ type: "notice", notice: notice({ text: "Your password expires in 2 days", data: { days: 2 } }) });
  assert.equal(of("notice").length, 2);
  assert.equal(of("notice")[1].text, "Your password expires in 2 days");
});

test("ack sends the notice id", () => {
  const { client, welcome } = setup();
  const ws = welcome();
  assert.equal(client.ack("pw-2026-11-22"), true);
  assert.deepEqual(ws.sentOf("ack"), [{ type: "ack", notice_id: "pw-2026-11-22" }]);
  assert.throws(() => client.ack(""), TypeError);
});

test("malformed notices are ignored", () => {
  const { welcome, of, last } = setup();
  welcome();
  last().receive({ type: "notice" });
  last().receive({ type: "notice", notice: { text: "no id" } });
  assert.deepEqual(of("notice"), []);
});

test("watchPresence sends watch_presence; presence frames become presence events", () => {
  const { client, welcome, of, last } = setup();
  const ws = welcome();
  client.watchPresence();
  assert.deepEqual(ws.sent, [{ type: "watch_presence" }]);
  const frame = {
    type: "presence", change: "status_changed", status: "away", at_ms: 1795396000000,
    session: { session_id: "5f0c", login: "ana", station: "desk-4", client: "web", role: "agent",
      state: "connected", status: "away", generation: 1, end_reason: null },
  };
  last().receive(frame);
  assert.deepEqual(of("presence"), [frame]);
});

test("watchPresence before the welcome is sent once the socket is welcomed", () => {
  const { client, welcome } = setup();
  client.watchPresence();
  assert.deepEqual(welcome().sent, [{ type: "watch_presence" }]);
});

test("a forbidden watch is reported as an error and the client stays online", () => {
  const { client, welcome, of, last } = setup();
  welcome();
  client.watchPresence();
  last().receive({ type: "error", code: "forbidden", message: "watch_presence needs role supervisor or admin" });
  assert.equal(of("error")[0].code, "forbidden");
  assert.equal(client.connectivity, "online");
});
