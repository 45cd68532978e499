// tabs.js: the election (Web Locks) and the relay (BroadcastChannel) over
// fakes of both, one fake clock and WebSocket per tab.

import { test } from "node:test";
import assert from "node:assert/strict";

import { connect, TurnstileClient } from "../turnstile.js";
import { TabClient, tabSupport } from "../tabs.js";
import { fakeWebSocketClass, TOKEN, WS_URL } from "./helpers.js";
import { fakeBrowser, openSockets, openTab } from "./tabs_fakes.js";

const notice = (id, extra = {}) => ({
  id, kind: "license_expiry", severity: "critical", text: `notice ${id}`, data: null, expires_at_ms: 0, ...extra,
});

/** Three tabs of one session; the first one leads and is welcomed. */
async function threeTabs(options = {}) {
  const browser = fakeBrowser();
  const tabs = ["a", "b", "c"].map((n) => openTab(browser, n, options));
  await browser.settle();
  const [a] = tabs;
  assert.equal(a.client.tabRole, "leader");
  a.welcome();
  await browser.settle();
  return { browser, tabs };
}

test("three tabs: one socket, held by the first; every tab gets the welcome and goes online", async () => {
  const { tabs } = await threeTabs();
  assert.equal(openSockets(tabs).length, 1);
  assert.equal(tabs[0].sockets[0].url, `${WS_URL}?token=${encodeURIComponent(TOKEN)}`);
  assert.deepEqual(tabs.map((t) => t.client.tabRole), ["leader", "follower", "follower"]);
  for (const t of tabs) {
    assert.deepEqual(t.of("connectivity"), ["online"], t.name);
    assert.equal(t.of("welcome").length, 1, t.name);
    assert.equal(t.client.session.session_id, "5f0c", t.name);
    assert.equal(t.client.connectivity, "online", t.name);
  }
});

test("every tab gets every event the leader's socket receives, once", async () => {
  const { browser, tabs } = await threeTabs();
  const ws = tabs[0].socket();
  ws.receive({ type: "notice", notice: notice("n1") });
  ws.receive({ type: "notice", notice: notice("n1") }); // re-delivery
  ws.receive({ type: "presence", change: "connected", session: { login: "bob" }, status: "", at_ms: 1 });
  ws.receive({ type: "error", code: "forbidden", message: "supervisors only" });
  await browser.settle();
  for (const t of tabs) {
    assert.deepEqual(t.of("notice"), [notice("n1")], t.name);
    assert.equal(t.of("presence").length, 1, t.name);
    assert.deepEqual(t.of("error"), [{ code: "forbidden", message: "supervisors only" }], t.name);
  }
});

test("a follower's status, ack and presence watch go out on the leader's socket, once each", async () => {
  const { browser, tabs } = await threeTabs();
  const [, b, c] = tabs;
  assert.equal(b.client.setStatus("away"), true);
  b.client.ack("n1");
  c.client.watchPresence();
  await browser.settle();
  const ws = tabs[0].socket();
  assert.deepEqual(ws.sentOf("status"), [{ type: "status", status: "away" }]);
  assert.deepEqual(ws.sentOf("ack"), [{ type: "ack", notice_id: "n1" }]);
  assert.deepEqual(ws.sentOf("watch_presence"), [{ type: "watch_presence" }]);
  for (const t of [b, c]) assert.equal(t.client._pending.size, 0, `${t.name} keeps no confirmed command`);
});

test("a tab opened later is shown the session and the notices not yet acked", async () => {
  const { browser, tabs } = await threeTabs();
  const ws = tabs[0].socket();
  ws.receive({ type: "notice", notice: notice("n1") });
  ws.receive({ type: "notice", notice: notice("n2") });
  await browser.settle();
  tabs[1].client.ack("n1");
  await browser.settle();
  const d = openTab(browser, "d");
  await browser.settle();
  assert.equal(d.client.tabRole, "follower");
  assert.equal(d.sockets.length, 0);
  assert.deepEqual(d.of("connectivity"), ["online"]);
  assert.equal(d.of("welcome")[0].session_id, "5f0c");
  assert.deepEqual(d.of("notice"), [notice("n2")]);
});

test("the leader tab closes: the next tab takes over at once, resumes with the same token, all tabs follow", async () => {
  const { browser, tabs } = await threeTabs();
  const [a, b, c] = tabs;
  // Said as the leader goes: heard by no leader, kept until one confirms it.
  c.client.setStatus("busy");
  a.close();
  await browser.settle();
  assert.equal(b.client.tabRole, "leader");
  assert.equal(openSockets(tabs).length, 1);
  assert.equal(b.sockets[0].url, a.sockets[0].url, "same token");
  const ws = b.welcome({ resumed: true });
  await browser.settle();
  for (const t of [b, c]) {
    assert.deepEqual(t.of("connectivity"), ["online", "degraded", "online"], t.name);
    assert.deepEqual(t.of("welcome").map((w) => w.resumed), [false, true], t.name);
    assert.equal(t.of("forcedLogout").length, 0, t.name);
  }
  assert.deepEqual(ws.sentOf("status"), [{ type: "status", status: "busy" }]);
  // Un-acked notices come again on the new socket: no tab shows one twice.
  ws.receive({ type: "notice", notice: notice("n1") });
  await browser.settle();
  ws.receive({ type: "notice", notice: notice("n1") });
  await browser.settle();
  assert.equal(c.of("notice").length, 1);
});

test("pagehide in the leader tab: its socket closes and the others hear it before the lock moves", async () => {
  const browser = fakeBrowser();
  const a = openTab(browser, "a");
  const b = openTab(browser, "b");
  await browser.settle();
  a.welcome();
  await browser.settle();
  const old = a.socket();
  a.page.dispatchEvent(new Event("pagehide"));
  assert.deepEqual(old.closedByClient, { code: 1000, reason: "client closing" });
  await browser.settle();
  assert.equal(b.client.tabRole, "leader");
  assert.deepEqual(b.of("connectivity"), ["online", "degraded"]);
  assert.equal(b.sockets.length, 1);
});

test("the presence watch of a follower survives a handover", async () => {
  const { browser, tabs } = await threeTabs();
  const [a, b, c] = tabs;
  c.client.watchPresence();
  await browser.settle();
  a.close();
  await browser.settle();
  const ws = b.welcome({ resumed: true });
  await browser.settle();
  assert.deepEqual(ws.sentOf("watch_presence"), [{ type: "watch_presence" }]);
});

test("close() in the leader tab hands over; the session stays", async () => {
  const { browser, tabs } = await threeTabs();
  const [a, b, c] = tabs;
  const old = a.socket();
  a.client.close();
  assert.deepEqual(old.closedByClient, { code: 1000, reason: "client closing" });
  assert.deepEqual(a.of("stopped"), [{ reason: "closed", code: null }]);
  await browser.settle();
  assert.equal(b.client.tabRole, "leader");
  assert.equal(c.client.connectivity, "degraded");
  assert.equal(c.of("stopped").length, 0);
  b.welcome({ resumed: true });
  await browser.settle();
  assert.equal(c.client.connectivity, "online");
});

test("a forced logout stops every tab, and no tab takes over or reconnects", async () => {
  const { browser, tabs } = await threeTabs();
  const ws = tabs[0].socket();
  const message = "Another user has logged with your credentials. Multiple logins not allowed.";
  ws.receive({ type: "forced_logout", reason: "superseded", message, by: null });
  await browser.settle();
  for (const t of tabs) {
    assert.deepEqual(t.of("forcedLogout"), [{ reason: "superseded", message, by: null }], t.name);
    assert.deepEqual(t.of("stopped"), [{ reason: "forced_logout", code: null }], t.name);
    assert.equal(t.client.connectivity, "offline", t.name);
  }
  tabs[0].close();
  await browser.settle();
  for (const t of tabs) t.clock.advance(60_000);
  assert.equal(openSockets(tabs).length, 0);
  assert.deepEqual(tabs.map((t) => t.sockets.length), [1, 0, 0]);
});

test("a tab opened after the session ended is told so and opens no socket", async () => {
  const { browser, tabs } = await threeTabs();
  tabs[0].socket().receive({ type: "logged_out" });
  await browser.settle();
  const d = openTab(browser, "d");
  await browser.settle();
  assert.equal(d.sockets.length, 0);
  assert.deepEqual(d.of("loggedOut"), [{}]);
  assert.deepEqual(d.of("stopped"), [{ reason: "logged_out", code: null }]);
});

test("logout() in a follower: the leader logs out, every tab stops, the promise says confirmed", async () => {
  const { browser, tabs } = await threeTabs();
  const done = tabs[2].client.logout();
  await browser.settle();
  const ws = tabs[0].socket();
  assert.deepEqual(ws.sentOf("logout"), [{ type: "logout" }]);
  ws.receive({ type: "logged_out" });
  await browser.settle();
  assert.equal(await done, true);
  for (const t of tabs) assert.deepEqual(t.of("stopped"), [{ reason: "logged_out", code: null }], t.name);
});

test("logout() in a follower with no leader to answer gives up after twice logoutTimeoutMs", async () => {
  const browser = fakeBrowser();
  const a = openTab(browser, "a");
  await browser.settle();
  a.welcome();
  const b = openTab(browser, "b", { logoutTimeoutMs: 1000 });
  await browser.settle();
  a.dead = true; // frozen: holds the lock, answers nothing
  const ws = a.socket();
  ws.onmessage = null;
  const done = b.client.logout();
  b.clock.advance(1999);
  assert.equal(b.client.stopped, false);
  b.clock.advance(1);
  assert.equal(await done, false);
  assert.deepEqual(b.of("stopped"), [{ reason: "logout_unconfirmed", code: null }]);
});

test("singleTab: a second tab of the session is refused and opens no socket", async () => {
  const browser = fakeBrowser();
  const a = openTab(browser, "a", { singleTab: true });
  await browser.settle();
  a.welcome();
  const b = openTab(browser, "b", { singleTab: true });
  await browser.settle();
  assert.equal(a.client.tabRole, "leader");
  assert.equal(b.sockets.length, 0);
  assert.equal(b.of("tabRefused").length, 1);
  assert.match(b.of("tabRefused")[0].message, /already open in another tab/);
  assert.deepEqual(b.of("stopped"), [{ reason: "tab_refused", code: null }]);
  assert.equal(b.client.stopped, true);
  assert.equal(a.client.connectivity, "online");
});

test("without Web Locks or BroadcastChannel (Node) connect() gives a plain client, one socket per tab", () => {
  assert.equal(tabSupport({}), null);
  const { FakeWebSocket, sockets } = fakeWebSocketClass();
  const a = connect(WS_URL, TOKEN, { WebSocket: FakeWebSocket, network: null });
  const b = connect(WS_URL, TOKEN, { WebSocket: FakeWebSocket, network: null });
  assert.ok(a instanceof TurnstileClient);
  assert.equal(sockets.length, 2);
  a.close();
  b.close();
});

test("shareAcrossTabs: false gives a plain client even where tabs could share", () => {
  const browser = fakeBrowser();
  const env = browser.tab("a");
  const { FakeWebSocket } = fakeWebSocketClass();
  const c = connect(WS_URL, TOKEN, { WebSocket: FakeWebSocket, network: null, shareAcrossTabs: false, tabs: env });
  assert.ok(c instanceof TurnstileClient);
  c.close();
  const shared = connect(WS_URL, TOKEN, { WebSocket: FakeWebSocket, network: null, tabs: env });
  assert.ok(shared instanceof TabClient);
  shared.close();
});

test("bad tab options are refused with the option's name", () => {
  const { FakeWebSocket } = fakeWebSocketClass();
  const base = { WebSocket: FakeWebSocket, network: null };
  assert.throws(() => connect(WS_URL, TOKEN, { ...base, shareAcrossTabs: "yes" }), /options\.shareAcrossTabs/);
  assert.throws(() => connect(WS_URL, TOKEN, { ...base, singleTab: 1 }), /options\.singleTab/);
  assert.throws(() => connect(WS_URL, TOKEN, { ...base, tabGroup: "" }), /options\.tabGroup/);
  assert.throws(() => connect(WS_URL, "", base), /token/);
});

test("tabs of different sessions do not share", async () => {
  const browser = fakeBrowser();
  const a = openTab(browser, "a");
  const b = openTab(browser, "b", { tabGroup: "another-session" });
  await browser.settle();
  assert.deepEqual([a.client.tabRole, b.client.tabRole], ["leader", "leader"]);
  assert.equal(openSockets([a, b]).length, 2);
});

test("the broker's connectivity word reaches every tab with its cause, and a late tab sees it too", async () => {
  const { browser, tabs } = await threeTabs();
  const details = tabs.map(() => []);
  tabs.forEach((t, i) => t.client.on("connectivity", (_state, detail) => details[i].push(detail)));
  tabs[0].socket().receive({ type: "connectivity", state: "degraded", cause: "redis_unreachable", since_ms: 7 });
  await browser.settle();
  for (const [i, t] of tabs.entries()) {
    assert.equal(t.client.connectivity, "degraded", t.name);
    assert.equal(t.client.connectivityCause, "server", t.name);
    assert.equal(details[i].at(-1)?.serverCause, "redis_unreachable", t.name);
  }
  const d = openTab(browser, "d");
  await browser.settle();
  assert.equal(d.client.connectivityCause, "server");
  tabs[0].socket().receive({ type: "connectivity", state: "ok" });
  await browser.settle();
  for (const t of [...tabs, d]) {
    assert.equal(t.client.connectivity, "online", t.name);
    assert.equal(t.client.connectivityCause, null, t.name);
  }
});
