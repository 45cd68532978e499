import { test } from "node:test";
import assert from "node:assert/strict";

import { backoffDelay, DEFAULTS } from "../turnstile.js";
import { setup } from "./helpers.js";

test("full jitter: the delay is uniform in [0, min(max, initial * 2^attempt))", () => {
  assert.equal(backoffDelay(0, 500, 30000, () => 0), 0);
  assert.equal(backoffDelay(0, 500, 30000, () => 0.5), 250);
  assert.equal(backoffDelay(3, 500, 30000, () => 0.5), 2000);
  assert.equal(backoffDelay(0, 500, 30000, () => 0.999999), 499);
  assert.equal(backoffDelay(0, 500, 30000, () => 1), 499, "never reaches the ceiling");
  assert.equal(backoffDelay(10, 500, 30000, () => 0.5), 15000, "capped at maxDelayMs");
  assert.equal(backoffDelay(1e9, 500, 30000, () => 0.999999), 29999, "huge attempts stay finite");
  assert.equal(backoffDelay(-1, 500, 30000, () => 0.5), 250);
});

test("the ceiling doubles per attempt until the cap", () => {
  const ceilings = [];
  for (let a = 0; a < 10; a++) ceilings.push(backoffDelay(a, 500, 30000, () => 1) + 1);
  assert.deepEqual(ceilings, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000]);
});

test("with Math.random, every delay stays within its bound", () => {
  for (let a = 0; a < 12; a++) {
    const ceiling = Math.min(DEFAULTS.maxDelayMs, DEFAULTS.initialDelayMs * 2 ** a);
    let min = Infinity;
    let max = -Infinity;
    for (let i = 0; i < 2000; i++) {
      const d = backoffDelay(a);
      assert.ok(Number.isInteger(d) && d >= 0 && d < ceiling, `attempt ${a}: ${d} outside [0, ${ceiling})`);
      min = Math.min(min, d);
      max = Math.max(max, d);
    }
    // jitter really spreads: both ends of the window are used
    assert.ok(min < ceiling * 0.1 && max > ceiling * 0.9, `attempt ${a}: spread ${min}..${max} of ${ceiling}`);
  }
});

test("failed reconnects grow the delay; the client draws from its random source", () => {
  const { clock, welcome, of, last } = setup({ initialDelayMs: 100, maxDelayMs: 1000, random: () => 0.999 });
  welcome();
  last().serverClose(1006);
  for (let i = 0; i < 6; i++) {
    const r = of("reconnecting").at(-1);
    clock.advance(r.delayMs);
    last().serverClose(1006); // the attempt fails before its welcome
  }
  assert.deepEqual(of("reconnecting").map((r) => r.delayMs), [99, 199, 399, 799, 999, 999, 999]);
  assert.deepEqual(of("reconnecting").map((r) => r.attempt), [1, 2, 3, 4, 5, 6, 7]);
  assert.deepEqual(of("connectivity"), ["online", "degraded"], "stays degraded while retrying");
});

test("jitter spreads reconnect delays of many clients", () => {
  const delays = new Set();
  for (let i = 0; i < 50; i++) {
    const { welcome, of, last } = setup({ random: Math.random });
    welcome();
    last().serverClose(1006);
    const d = of("reconnecting")[0].delayMs;
    assert.ok(d >= 0 && d < 500);
    delays.add(d);
  }
  assert.ok(delays.size > 20, `only ${delays.size} distinct delays`);
});

test("a welcome resets the backoff", () => {
  const { clock, welcome, of, last } = setup({ random: () => 0.999 });
  welcome();
  for (let i = 0; i < 3; i++) {
    last().serverClose(1006);
    clock.advance(of("reconnecting").at(-1).delayMs);
  }
  assert.equal(of("reconnecting").at(-1).delayMs, 1998); // 0.999 * 2000, attempt 2
  welcome();
  last().serverClose(1006);
  assert.equal(of("reconnecting").at(-1).delayMs, 499);
  assert.equal(of("reconnecting").at(-1).attempt, 1);
});

test("maxAttempts bounds the retries: then error reconnect_exhausted and offline", () => {
  const { clock, welcome, of, last, sockets, client } = setup({ maxAttempts: 3 });
  welcome();
  last().serverClose(1006);
  for (let i = 0; i < 3; i++) {
    clock.advance(of("reconnecting").at(-1).delayMs);
    last().serverClose(1006);
  }
  assert.equal(sockets.length, 4, "one original + three attempts");
  assert.equal(of("error").at(-1).code, "reconnect_exhausted");
  assert.deepEqual(of("stopped"), [{ reason: "gave_up", code: null }]);
  assert.equal(client.connectivity, "offline");
  clock.advance(120_000);
  assert.equal(sockets.length, 4);
});

test("the first connection failing also retries with backoff (degraded)", () => {
  const { clock, last, of, sockets } = setup();
  last().serverClose(1006);
  assert.deepEqual(of("connectivity"), ["degraded"]);
  clock.advance(of("reconnecting")[0].delayMs);
  assert.equal(sockets.length, 2);
});

test("reconnectNow skips the wait; an online event from the network does too", () => {
  const listeners = {};
  const network = {
    addEventListener: (t, fn) => (listeners[t] = fn),
    removeEventListener: (t) => delete listeners[t],
  };
  const { welcome, last, sockets, client } = setup({ network, random: () => 0.999 });
  welcome();
  last().serverClose(1006);
  assert.equal(sockets.length, 1);
  client.reconnectNow();
  assert.equal(sockets.length, 2);
  last().serverClose(1006);
  listeners.online();
  assert.equal(sockets.length, 3);
  client.reconnectNow(); // not waiting: nothing happens
  assert.equal(sockets.length, 3);
  client.close();
  assert.equal(listeners.online, undefined, "the network listener is removed on stop");
});
