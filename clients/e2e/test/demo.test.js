// End-to-end tests of `turnstile demo` in headless Chromium: real broker,
// real login service, the real page and SDK. Each test starts its own demo
// on free loopback ports; each simulated person gets their own browser
// context. Screenshots of every step go to clients/e2e/screenshots/.
//
// Every wait is bounded (WAIT_MS, or the test's own timeout), and every
// process started here is stopped in an after hook.

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { resolve } from "node:path";

import { ARTIFACTS, SHOTS, suite, TEST_MS, WAIT_MS } from "../lib/suite.js";

const SUPERSEDED = "Another user has logged with your credentials. Multiple logins not allowed.";
const STATION_CHANGED = "Your connection has been dropped due to a subsequent log on to a different station.";
const NETWORK = "Experiencing network connectivity issues. Please check your internet connection.";
const SERVICE = "Service notice: we are having trouble with our systems. Your session is safe — keep working; you stay signed in.";
const LOGIN_IN_USE = "User already logged. Do you want to continue?";
const SEATS_EXHAUSTED = "No seat is free: your organisation's licence allows 1 signed-in users and 1 are signed in. " +
  "Please try again when a colleague signs out, or ask your administrator for more seats.";
const LOGIN_CHANGED = "Someone else signed in as this user since you were asked. Do you want to continue?";

const { browser, demo } = suite();

/**
 * A person: an isolated browser context with one page on the demo. With
 * `device`, the profile's kept device id is that (as two profiles of one
 * machine given its id); without, the page makes its own random one.
 */
async function person(d, name, device) {
  const context = await browser().newContext({ viewport: { width: 1000, height: 720 } });
  if (device) await context.addInitScript((id) => localStorage.setItem("turnstile-device", id), device);
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  page.on("pageerror", (e) => console.error(`[${name}] page error:`, e.message));
  await page.goto(d.url);
  await stationsLoaded(page);
  return { name, context, page };
}

async function stationsLoaded(page) {
  await page.waitForFunction(() => document.querySelectorAll("#station option").length > 1);
}

/** Fills and submits the sign-in form (the page stays as loaded: a stale station list stays stale). */
async function submitSignIn(page, login, station) {
  await page.fill("#login", login);
  await page.fill("#password", "demo");
  await page.selectOption("#station", station);
  await page.click("#signin-btn");
}

async function signIn(p, login, station) {
  await submitSignIn(p.page, login, station);
  await online(p.page);
}

async function online(page) {
  await page.locator("#agent").waitFor({ state: "visible" });
  await waitText(page, "#conn", "online");
}

async function waitText(page, selector, text, timeout = WAIT_MS) {
  await page.waitForFunction(
    ([sel, t]) => (document.querySelector(sel)?.textContent ?? "").includes(t),
    [selector, text],
    { timeout },
  );
}

async function text(page, selector) {
  return (await page.locator(selector).textContent())?.trim();
}

async function shot(page, name) {
  await page.screenshot({ path: resolve(SHOTS, `${name}.png`) });
}

/** Runs `body`; on failure saves a screenshot of every page to artifacts/ (not committed). */
async function withPeople(name, people, body) {
  try {
    await body();
  } catch (e) {
    for (const p of people) {
      await p.page.screenshot({ path: resolve(ARTIFACTS, `failed-${name}-${p.name}.png`) }).catch(() => {});
    }
    throw e;
  } finally {
    for (const p of people) await p.context.close().catch(() => {});
  }
}

test("a second sign-in asks to confirm, takes over, and the first desktop shows the forced logout", { timeout: TEST_MS }, async () => {
  const d = await demo();
  const first = await person(d, "first");
  const second = await person(d, "second");
  const third = await person(d, "third");
  await withPeople("takeover", [first, second, third], async () => {
    await signIn(first, "ana", "desk-101");
    assert.equal(await text(first.page, "#agent-station"), "desk-101");
    await shot(first.page, "01-agent-signed-in");

    // Same login, same station, another browser: refused with a question.
    await submitSignIn(second.page, "ana", "desk-101");
    await second.page.locator("#confirm").waitFor({ state: "visible" });
    assert.equal(await text(second.page, "#confirm-text"), LOGIN_IN_USE);
    assert.match(await text(second.page, "#confirm-detail"), /ana is signed in at desk-101/);
    await shot(second.page, "02-login-in-use-confirm");

    await second.page.click("#confirm-yes");
    await online(second.page);
    await first.page.locator("#ended").waitFor({ state: "visible" });
    assert.equal(await text(first.page, "#ended-message"), SUPERSEDED);
    assert.equal(await first.page.locator("#net-banner").isHidden(), true, "a forced logout is not a network problem");
    await shot(first.page, "03-forced-logout-superseded");

    // Same login at a different station: the message says so.
    await submitSignIn(third.page, "ana", "desk-102");
    await third.page.locator("#confirm").waitFor({ state: "visible" });
    await third.page.click("#confirm-yes");
    await online(third.page);
    await second.page.locator("#ended").waitFor({ state: "visible" });
    assert.equal(await text(second.page, "#ended-message"), STATION_CHANGED);
    await shot(second.page, "04-forced-logout-station-changed");

    // The forced-out page never reconnects: it stays signed out.
    await second.page.waitForTimeout(2500);
    assert.equal(await second.page.locator("#ended").isVisible(), true);
    assert.equal(await text(second.page, "#conn"), "offline");
  });
});

test("Continue ends only the session it asked about; a sign-in in between is asked about again", { timeout: TEST_MS }, async () => {
  const d = await demo();
  const first = await person(d, "first");
  const asker = await person(d, "asker");
  const meanwhile = await person(d, "meanwhile");
  await withPeople("continue-race", [first, asker, meanwhile], async () => {
    await signIn(first, "ana", "desk-101");
    // The asker is shown ana at desk-101 ...
    await submitSignIn(asker.page, "ana", "desk-102");
    await asker.page.locator("#confirm").waitFor({ state: "visible" });
    assert.match(await text(asker.page, "#confirm-detail"), /ana is signed in at desk-101/);
    // ... but before the click ana signs in again at desk-103.
    await submitSignIn(meanwhile.page, "ana", "desk-103");
    await meanwhile.page.locator("#confirm").waitFor({ state: "visible" });
    await meanwhile.page.click("#confirm-yes");
    await online(meanwhile.page);
    await first.page.locator("#ended").waitFor({ state: "visible" });

    // Continue does not end desk-103, which the asker never saw: it asks again.
    await asker.page.click("#confirm-yes");
    await waitText(asker.page, "#confirm-text", LOGIN_CHANGED);
    assert.equal(await asker.page.locator("#confirm").isVisible(), true);
    assert.match(await text(asker.page, "#confirm-detail"), /ana is signed in at desk-103/);
    assert.equal(await text(meanwhile.page, "#conn"), "online", "the unseen session is untouched");
    assert.equal(await meanwhile.page.locator("#ended").isHidden(), true);
    await shot(asker.page, "16-login-changed-asks-again");

    // Confirmed against desk-103 this time: that one ends.
    await asker.page.click("#confirm-yes");
    await online(asker.page);
    await meanwhile.page.locator("#ended").waitFor({ state: "visible" });
    assert.equal(await text(meanwhile.page, "#ended-message"), STATION_CHANGED);
  });
});

test("a full seat licence is a clear message, with no takeover offered", { timeout: TEST_MS }, async () => {
  const d = await demo();
  // The operator sets the demo tenant's licence to one seat through `turnstile ctl`.
  const bin = process.env.TURNSTILE_BIN ?? resolve(ARTIFACTS, "../../../target/debug/turnstile");
  const out = execFileSync(bin, ["ctl", "--addr", `http://${d.grpc}`, "seats", "--tenant", "demo", "--limit", "1"],
    { encoding: "utf8", timeout: WAIT_MS });
  assert.match(out, /0 of 1 in use/);
  const ana = await person(d, "ana");
  const bob = await person(d, "bob");
  await withPeople("seats", [ana, bob], async () => {
    await signIn(ana, "ana", "desk-101");
    await submitSignIn(bob.page, "bob", "desk-102");
    await bob.page.locator("#signin-error").waitFor({ state: "visible" });
    assert.equal(await text(bob.page, "#signin-error"), SEATS_EXHAUSTED);
    assert.equal(await bob.page.locator("#confirm").isHidden(), true, "no takeover is offered for a seat");
    await shot(bob.page, "17-seats-exhausted");
  });
});

test("the station picker is the broker's directory: free stations to pick, taken ones with their holder", { timeout: TEST_MS }, async () => {
  const d = await demo();
  // The operator adds a station to the demo tenant's directory through `turnstile ctl`.
  const bin = process.env.TURNSTILE_BIN ?? resolve(ARTIFACTS, "../../../target/debug/turnstile");
  const out = execFileSync(bin, ["ctl", "--addr", `http://${d.grpc}`, "stations", "--tenant", "demo", "register", "lab-1"],
    { encoding: "utf8", timeout: WAIT_MS });
  assert.match(out, /added: 1 {2}registered: 11/);
  const ana = await person(d, "ana");
  await withPeople("picker", [ana], async () => {
    await signIn(ana, "ana", "desk-101");
  });
  const bob = await person(d, "bob"); // loads the picker with desk-101 taken
  await withPeople("picker", [bob], async () => {
    const options = await bob.page.$$eval("#station option", (os) =>
      os.map((o) => ({ value: o.value, disabled: o.disabled, label: o.textContent })));
    const free = options.filter((o) => o.value && !o.disabled).map((o) => o.value);
    assert.deepEqual(free, ["desk-102", "desk-103", "desk-104", "desk-105", "desk-106", "desk-107",
      "desk-108", "desk-109", "desk-110", "lab-1"]);
    const held = options.find((o) => o.value === "desk-101");
    assert.equal(held.disabled, true);
    assert.equal(held.label, "desk-101 — in use (ana)");
    assert.equal(await text(bob.page, "#stations-taken"), "In use: desk-101 (ana)");
    await bob.page.selectOption("#station", "lab-1");
    await shot(bob.page, "18-station-picker-from-directory");
    await signIn(bob, "bob", "lab-1");
    assert.equal(await text(bob.page, "#agent-station"), "lab-1");
  });
});

test("a station held by another user is refused", { timeout: TEST_MS }, async () => {
  const d = await demo();
  const carl = await person(d, "carl"); // loads the station list while desk-106 is still free
  const bob = await person(d, "bob");
  await withPeople("station", [carl, bob], async () => {
    await signIn(bob, "bob", "desk-106");

    await submitSignIn(carl.page, "carl", "desk-106");
    await carl.page.locator("#signin-error").waitFor({ state: "visible" });
    assert.equal(await text(carl.page, "#signin-error"), "Station desk-106 is in use by bob. Please pick another station.");
    assert.equal(await carl.page.locator("#confirm").isHidden(), true, "no takeover offered for a station");
    // The picker is refreshed: desk-106 is now shown as taken.
    await carl.page.waitForFunction(() => document.querySelector('#station option[value="desk-106"]')?.disabled === true);
    await shot(carl.page, "05-station-in-use-refused");

    // Bob is untouched.
    assert.equal(await text(bob.page, "#conn"), "online");
  });
});

test("a network outage shows the banner, which clears by itself after the reconnect", { timeout: TEST_MS }, async () => {
  const d = await demo();
  const ana = await person(d, "ana");
  await withPeople("network", [ana], async () => {
    await signIn(ana, "ana", "desk-104");
    assert.equal(await ana.page.locator("#net-banner").isHidden(), true);

    // Stall: traffic silently disappears; only the heartbeats (1 s here)
    // notice, the SDK within two of them.
    const stalledAt = Date.now();
    await ana.page.click("#net-stall");
    await ana.page.locator("#net-banner").waitFor({ state: "visible", timeout: 10_000 });
    const detectedMs = Date.now() - stalledAt;
    assert.ok(detectedMs < 5_000, `dead socket noticed after ${detectedMs} ms`);
    assert.equal(await text(ana.page, "#net-banner span"), NETWORK);
    assert.equal(await text(ana.page, "#conn"), "degraded");
    await shot(ana.page, "06-network-banner");
    // Let the broker's heartbeat notice the dead socket too, as it would in
    // a real outage, so the reconnect is a resume.
    await ana.page.waitForTimeout(1500);

    await ana.page.click("#net-up");
    await ana.page.locator("#net-banner").waitFor({ state: "hidden" });
    await waitText(ana.page, "#conn", "online");
    await waitText(ana.page, "#session-info", "resumed");
    assert.equal(await text(ana.page, "#agent-station"), "desk-104", "still the same session");
    await shot(ana.page, "07-network-back-resumed");

    // Cut: every connection closes at once; the banner shows at once and
    // clears again when the network is back.
    await ana.page.click("#net-cut");
    await ana.page.locator("#net-banner").waitFor({ state: "visible", timeout: 5_000 });
    await ana.page.click("#net-up");
    await ana.page.locator("#net-banner").waitFor({ state: "hidden" });
    await waitText(ana.page, "#conn", "online");
    assert.equal(await ana.page.locator("#agent").isVisible(), true);
  });
});

test("a backend outage shows the service notice, not the network banner, to open and new desktops", { timeout: TEST_MS }, async () => {
  const d = await demo();
  const ana = await person(d, "ana");
  const bob = await person(d, "bob");
  await withPeople("backend", [ana, bob], async () => {
    await signIn(ana, "ana", "desk-104");

    // The broker says it cannot vouch for the session (as a node that lost
    // Redis does): the socket stays up, the page says it is our side.
    await ana.page.click("#backend-degrade");
    await ana.page.locator("#svc-banner").waitFor({ state: "visible" });
    assert.equal(await text(ana.page, "#svc-banner span"), SERVICE);
    assert.equal(await ana.page.locator("#net-banner").isHidden(), true, "not the network banner");
    assert.equal(await text(ana.page, "#conn"), "degraded");
    await shot(ana.page, "12-service-notice-backend-degraded");

    // A desktop signing in meanwhile is told right after its welcome.
    await submitSignIn(bob.page, "bob", "desk-105");
    await bob.page.locator("#agent").waitFor({ state: "visible" });
    await bob.page.locator("#svc-banner").waitFor({ state: "visible" });
    assert.equal(await text(bob.page, "#conn"), "degraded");

    await ana.page.click("#backend-ok");
    for (const p of [ana, bob]) {
      await p.page.locator("#svc-banner").waitFor({ state: "hidden" });
      await waitText(p.page, "#conn", "online");
    }
    assert.equal(await text(ana.page, "#agent-station"), "desk-104", "still the same session");
  });
});

test("notices show as banners until acked; the supervisor sees live presence and sends notices", { timeout: TEST_MS }, async () => {
  const d = await demo();
  const sup = await person(d, "sup");
  const carl = await person(d, "carl");
  await withPeople("notices", [sup, carl], async () => {
    await submitSignIn(sup.page, "sup", "");
    await online(sup.page);
    await sup.page.locator("#supervisor").waitFor({ state: "visible" });
    await waitText(sup.page, 'tr[data-login="carl"] td.state', "signed out");

    // Carl's password expires in 3 days: the login service queues a notice
    // at sign-in, delivered right after the welcome.
    await signIn(carl, "carl", "desk-103");
    const pw = carl.page.locator(".notice", { hasText: "Your password expires in 3 days" });
    await pw.waitFor({ state: "visible" });
    assert.match(await pw.getAttribute("class"), /warning/);
    await shot(carl.page, "08-notice-password-expiry");

    // Live presence on the supervisor's screen.
    await waitText(sup.page, 'tr[data-login="carl"] td.state', "connected");
    await carl.page.click('#status-buttons button[data-status="away"]');
    await waitText(sup.page, 'tr[data-login="carl"] td.status', "away");
    assert.equal(await text(sup.page, 'tr[data-login="carl"] td:nth-child(2)'), "desk-103");

    // A license notice from the supervisor arrives at once.
    await sup.page.fill("#notice-days", "1");
    await sup.page.click('tr[data-login="carl"] button.notify-license_expiry');
    await waitText(sup.page, "#notify-result", "delivered to 1");
    await shot(sup.page, "09-supervisor-presence-and-notify");
    const lic = carl.page.locator(".notice", { hasText: "Your license expires in 1 day" });
    await lic.waitFor({ state: "visible" });
    assert.match(await lic.getAttribute("class"), /critical/);
    await shot(carl.page, "10-notice-license-expiry");

    // Acking removes the banner.
    await pw.locator("button.ack").click();
    await pw.waitFor({ state: "detached" });
    assert.equal(await carl.page.locator(".notice").count(), 1);

    // Signing out ends the session; the supervisor sees it.
    await carl.page.click("#logout");
    await carl.page.locator("#signin").waitFor({ state: "visible" });
    await waitText(sup.page, 'tr[data-login="carl"] td.state', "signed out");
    await shot(sup.page, "11-supervisor-sees-sign-out");
  });
});

test("two people on one computer share its station; another computer is refused with both shown", { timeout: TEST_MS }, async () => {
  const d = await demo();
  const ana = await person(d, "ana", "pc-front-desk");
  const bob = await person(d, "bob", "pc-front-desk");
  const carl = await person(d, "carl"); // another computer
  await withPeople("shared-station", [ana, bob, carl], async () => {
    await signIn(ana, "ana", "desk-103");

    // Bob, on the same computer, sees desk-103 as shared and may pick it.
    await bob.page.click("#refresh-stations");
    await bob.page.waitForFunction(() => {
      const o = document.querySelector('#station option[value="desk-103"]');
      return o && !o.disabled && o.textContent.includes("shared on this computer (ana)");
    });
    await signIn(bob, "bob", "desk-103");
    assert.equal(await text(bob.page, "#agent-station"), "desk-103");
    assert.equal(await text(ana.page, "#conn"), "online", "ana keeps the station");
    await shot(bob.page, "18-shared-station-second-login");

    // Carl's computer (its list loaded while desk-103 was free): refused,
    // naming both holders; the refreshed picker shows it taken.
    await submitSignIn(carl.page, "carl", "desk-103");
    await carl.page.locator("#signin-error").waitFor({ state: "visible" });
    assert.equal(await text(carl.page, "#signin-error"), "Station desk-103 is in use by ana, bob. Please pick another station.");
    await carl.page.waitForFunction(() => {
      const o = document.querySelector('#station option[value="desk-103"]');
      return o?.disabled === true && o.textContent.includes("in use (ana, bob)");
    });
    await shot(carl.page, "19-shared-station-other-computer-refused");

    // Both sharers are untouched.
    assert.equal(await text(ana.page, "#conn"), "online");
    assert.equal(await text(bob.page, "#conn"), "online");
  });
});
