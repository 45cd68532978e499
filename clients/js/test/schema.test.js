// The frame schema the SDK ships (schema/frames.schema.json) against the
// frames the SDK really sends. The broker's side of the same schema is
// tested against a real node in tests/frame_schemas.rs.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

import { setup, welcomeFrame } from "./helpers.js";
import { assertSupported, validate } from "./schema-validator.js";

const schemaUrl = new URL("../schema/frames.schema.json", import.meta.url);
const schema = JSON.parse(readFileSync(schemaUrl, "utf8"));
const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8"));

/** The frame types one direction (server_frame / client_frame) lists. */
const kinds = (which) => schema.$defs[which].oneOf.map((r) => r.$ref.split("/").pop()).sort();
const check = (which, frame) => validate(schema, frame, { $ref: `#/$defs/${which}` });

test("the schema uses only keywords the validator knows, and ships in the package", () => {
  assertSupported(schema);
  assert.equal(schema.$schema, "https://json-schema.org/draft/2020-12/schema");
  assert.ok(pkg.files.includes("schema/frames.schema.json"), "listed in package.json files");
  assert.equal(pkg.exports["./schema/frames.schema.json"], "./schema/frames.schema.json");
});

test("the validator refuses what the schema forbids", () => {
  const bad = [
    { type: "status", status: "" },
    { type: "status", status: "x".repeat(65) },
    { type: "status" },
    { type: "ack", notice_id: 7 },
    { type: "logout", now: true },
    { type: "dance" },
    { type: "welcome" },
  ];
  for (const f of bad) assert.notDeepEqual(check("client_frame", f), [], JSON.stringify(f));
  assert.deepEqual(check("client_frame", { type: "ping" }), []);
  assert.deepEqual(check("client_frame", { type: "ping", id: { any: ["json"] } }), []);
});

test("every frame the SDK sends is a valid client frame, and it sends every kind", async () => {
  const t = setup();
  let ws = t.welcome();
  t.clock.advance(1000); // one heartbeat: a ping
  ws.receive({ type: "pong", id: 1 });
  t.client.setStatus("away");
  t.client.ack("pw-2026-11-22");
  t.client.watchPresence();
  // Offline: status and acks wait, then go out after the next welcome,
  // together with the presence subscription.
  ws.serverClose(1006);
  t.client.setStatus("busy");
  t.client.ack("lic-1");
  t.clock.advance(t.of("reconnecting")[0].delayMs);
  ws = t.welcome({ resumed: true });
  const done = t.client.logout();
  ws.receive({ type: "logged_out" });
  assert.equal(await done, true);

  const sent = t.sockets.flatMap((s) => s.sent);
  for (const f of sent) assert.deepEqual(check("client_frame", f), [], JSON.stringify(f));
  assert.deepEqual([...new Set(sent.map((f) => f.type))].sort(), kinds("client_frame"));
});

test("the server frames the SDK's tests feed it are valid server frames", () => {
  for (const f of [welcomeFrame(), welcomeFrame({ resumed: true, station: null })]) {
    assert.deepEqual(check("server_frame", f), [], JSON.stringify(f));
  }
});
