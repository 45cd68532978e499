// Browser tests of the SDK's tab sharing in headless Chromium, on the real
// demo: tabs are pages of one browser context (one profile), so they share
// localStorage (the demo keeps the sign-in there), Web Locks and
// BroadcastChannel. The broker's own /metrics says how many sockets it holds.
//
// Every wait is bounded (WAIT_MS, or the test's own timeout), and every
// process started here is stopped in an after hook.

import { test } from "node:test";
import assert from "node:assert/strict";
import { resolve } from "node:path";

import { ARTIFACTS, SHOTS, suite, TEST_MS, WAIT_MS } from "../lib/suite.js";

const { browser, demo } = suite();

/** One browser profile; its pages are the tabs. Closed at the end of `body`, with screenshots on failure. */
async function withProfile(name, body) {
  const context = await browser().newContext({ viewport: { width: 1000, height: 720 } });
  const tabs = [];
  const open = async (url) => {
    const page = await context.newPage();
    page.setDefaultTimeout(WAIT_MS);
    const tab = `${name}-${tabs.length + 1}`;
    page.on("pageerror", (e) => console.error(`[${tab}] page error:`, e.message));
    tabs.push({ tab, page });
    await page.goto(url);
    return page;
  };
  try {
    await body(open);
  } catch (e) {
    for (const { tab, page } of tabs) {
      if (!page.isClosed()) await page.screenshot({ path: resolve(ARTIFACTS, `failed-${tab}.png`) }).catch(() => {});
    }
    throw e;
  } finally {
    await context.close().catch(() => {});
  }
}

async function signIn(page, login, station) {
  await page.waitForFunction(() => document.querySelectorAll("#station option").length > 1);
  await page.fill("#login", login);
  await page.fill("#password", "demo");
  await page.selectOption("#station", station);
  await page.click("#signin-btn");
  await online(page);
}

async function online(page) {
  await page.locator("#agent").waitFor({ state: "visible" });
  await waitText(page, "#conn", "online");
}

async function waitText(page, selector, text) {
  await page.waitForFunction(
    ([sel, t]) => (document.querySelector(sel)?.textContent ?? "").includes(t),
    [selector, text],
    { timeout: WAIT_MS },
  );
}

async function text(page, selector) {
  return (await page.locator(selector).textContent())?.trim();
}

/** The broker's `turnstile_sockets` gauge (summed over label sets). */
async function sockets(d) {
  const res = await fetch(`http://${d.http}/metrics`, { signal: AbortSignal.timeout(WAIT_MS) });
  assert.equal(res.status, 200, "GET /metrics");
  let sum = null;
  for (const line of (await res.text()).split("\n")) {
    const m = line.match(/^turnstile_sockets(?:\{[^}]*\})?\s+(\S+)$/);
    if (m) sum = (sum ?? 0) + Number(m[1]);
  }
  assert.notEqual(sum, null, "turnstile_sockets is in /metrics");
  return sum;
}

/**
 * Waits until the gauge reads `n`: a closed socket is counted down when the
 * broker has processed its close, which no page event tells us. Bounded.
 */
async function socketsSettleAt(d, n) {
  const deadline = Date.now() + WAIT_MS;
  let last;
  while ((last = await sockets(d)) !== n) {
    if (Date.now() > deadline) assert.fail(`turnstile_sockets stayed ${last}, expected ${n}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Sends a license-expiry notice to `login` through the demo login service (gRPC Notify). */
async function notify(d, login) {
  const post = (path, body, key) => fetch(new URL(path, d.url), {
    method: "POST",
    headers: { "Content-Type": "application/json", ...(key ? { Authorization: `Bearer ${key}` } : {}) },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(WAIT_MS),
  });
  const sup = await post("/api/login", { login: "sup", password: "demo", station: "", confirm: true });
  assert.equal(sup.status, 200, "supervisor sign-in");
  const { api_key: key } = await sup.json();
  const r = await post("/api/notify", { login, kind: "license_expiry", days: 1 }, key);
  assert.equal(r.status, 200, "notify");
  return r.json();
}

test("three tabs share one socket, all get every notice, and closing the leader tab hands the session over", { timeout: TEST_MS }, async () => {
  const d = await demo();
  await withProfile("ana", async (open) => {
    const first = await open(d.url);
    await signIn(first, "ana", "desk-107");
    // The other tabs find the sign-in and join the session without signing in.
    const second = await open(d.url);
    await online(second);
    const third = await open(d.url);
    await online(third);
    await waitText(first, "#tab-role", "holds the connection");
    for (const page of [second, third]) await waitText(page, "#tab-role", "shares the connection");
    const session = (await text(first, "#session-info")).match(/^Session \S+/)[0];
    for (const page of [second, third]) assert.equal((await text(page, "#session-info")).match(/^Session \S+/)[0], session);
    assert.equal(await sockets(d), 1, "one socket for three tabs");

    const sent = await notify(d, "ana");
    assert.equal(sent.delivered, 1, "delivered to one socket");
    for (const page of [first, second, third]) {
      await page.locator(".notice", { hasText: "Your license expires in 1 day" }).waitFor({ state: "visible" });
    }
    await second.screenshot({ path: resolve(SHOTS, "13-three-tabs-one-socket.png") });

    // The leader tab goes: the next tab takes the lock and resumes the session.
    await first.close();
    for (const page of [second, third]) {
      await waitText(page, "#session-info", "resumed after a reconnect");
      assert.equal((await text(page, "#session-info")).match(/^Session \S+/)[0], session, "the same session");
      await waitText(page, "#conn", "online");
      assert.equal(await page.locator("#ended").isHidden(), true, "no forced logout");
    }
    await waitText(second, "#tab-role", "holds the connection");
    await waitText(third, "#tab-role", "shares the connection");
    await socketsSettleAt(d, 1);
    await second.screenshot({ path: resolve(SHOTS, "14-tab-took-over.png") });
  });
});

test("singleTab: a second tab of the session is refused and opens no socket", { timeout: TEST_MS }, async () => {
  const d = await demo();
  await withProfile("bob", async (open) => {
    const url = new URL("/?single-tab", d.url).href;
    const first = await open(url);
    await signIn(first, "bob", "desk-108");
    assert.equal(await sockets(d), 1);

    const second = await open(url);
    await second.locator("#ended").waitFor({ state: "visible" });
    assert.match(await text(second, "#ended-message"), /already open in another tab/);
    await second.screenshot({ path: resolve(SHOTS, "15-single-tab-refused.png") });
    assert.equal(await sockets(d), 1, "the refused tab opened no socket");
    assert.equal(await text(first, "#conn"), "online");
  });
});
