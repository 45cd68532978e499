// The demo agent desktop: signs in through the demo login service
// (/api/login → the broker's Claim), then holds the agent's WebSocket with
// the turnstile SDK. Plain ES module, no build step.
//
// The sign-in is kept in localStorage, so a second tab of this browser opens
// already signed in, with the same session: the SDK then shares the one
// WebSocket among the tabs (shareAcrossTabs). `?single-tab` in the URL turns
// on the SDK's singleTab option instead: a second tab is refused.

import { connect } from "/turnstile.js";

const $ = (id) => document.getElementById(id);

/** The sign-in answer (token, ws_url, api_key, role, ...) while signed in. */
let me = null;
/** The SDK client while signed in. */
let client = null;
/** Supervisor view: login -> row state. */
const agents = new Map();
/** Where the sign-in is kept for the other tabs of this browser. */
const SAVED_SIGNIN = "turnstile-demo-signin";
const SINGLE_TAB = new URLSearchParams(location.search).has("single-tab");
/** Where this browser profile keeps its device id. */
const DEVICE_KEY = "turnstile-device";

/**
 * This browser profile's stable device id, made once and kept: people who
 * sign in from one device share its station (the broker's `device`).
 * Random bytes (crypto.getRandomValues works on plain http too).
 */
function deviceId() {
  try {
    const kept = localStorage.getItem(DEVICE_KEY);
    if (kept && /^[A-Za-z0-9._@+:-]{1,64}$/.test(kept)) return kept;
    const bytes = crypto.getRandomValues(new Uint8Array(12));
    const id = `web-${[...bytes].map((b) => b.toString(16).padStart(2, "0")).join("")}`;
    localStorage.setItem(DEVICE_KEY, id);
    return id;
  } catch {
    return ""; // storage disabled: no device, the station is not shared
  }
}
const DEVICE = deviceId();

function saveSignIn(login) {
  try {
    if (login) localStorage.setItem(SAVED_SIGNIN, JSON.stringify(login));
    else localStorage.removeItem(SAVED_SIGNIN);
  } catch {
    // storage disabled: every tab signs in by itself
  }
}

function savedSignIn() {
  try {
    const login = JSON.parse(localStorage.getItem(SAVED_SIGNIN) ?? "null");
    return login && typeof login.token === "string" && typeof login.ws_url === "string" ? login : null;
  } catch {
    return null;
  }
}

// --- HTTP -------------------------------------------------------------------

async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (me && me.api_key) headers.Authorization = `Bearer ${me.api_key}`;
  try {
    const res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(10_000),
    });
    let data = {};
    try {
      data = await res.json();
    } catch {
      // not JSON
    }
    return { status: res.status, data };
  } catch (e) {
    return { status: 0, data: { message: `The login service cannot be reached (${e.message}).` } };
  }
}

// --- views ------------------------------------------------------------------

function show(view) {
  for (const id of ["signin", "agent", "supervisor", "ended"]) $(id).hidden = true;
  for (const id of view) $(id).hidden = false;
}

function signinError(text) {
  $("signin-error").textContent = text;
  $("signin-error").hidden = !text;
}

async function loadStations() {
  const r = await api("GET", "/api/stations");
  const select = $("station");
  const keep = select.value;
  select.replaceChildren();
  const none = new Option("(no station — supervisors)", "");
  select.add(none);
  for (const s of r.data.stations ?? []) {
    // Held only from this browser: it may be shared (another login here).
    const holders = s.holders ?? [];
    const ours = !s.free && DEVICE !== "" && holders.length > 0 && holders.every((h) => h.device === DEVICE);
    const who = holders.length ? holders.map((h) => h.login).join(", ") : s.login;
    const label = s.free ? s.station
      : ours ? `${s.station} — shared on this computer (${who})`
      : `${s.station} — in use (${who})`;
    const opt = new Option(label, s.station);
    opt.disabled = !s.free && !ours;
    select.add(opt);
  }
  // The taken stations and who holds them (the broker's directory lists both).
  const taken = (r.data.stations ?? []).filter((s) => !s.free);
  $("stations-taken").textContent = taken.length
    ? `In use: ${taken.map((s) => `${s.station} (${s.login})`).join(", ")}`
    : "";
  $("stations-taken").hidden = taken.length === 0;
  const firstFree = (r.data.stations ?? []).find((s) => s.free);
  select.value = keep && [...select.options].some((o) => o.value === keep && !o.disabled)
    ? keep
    : firstFree ? firstFree.station : "";
}

function when(ms) {
  return ms ? new Date(ms).toLocaleTimeString() : "?";
}

// The holder the person was asked about: Continue ends only that session.
let shownHolder = "";

async function signIn(confirm) {
  signinError("");
  $("confirm").hidden = true;
  const body = {
    login: $("login").value.trim(),
    password: $("password").value,
    station: $("station").value,
    confirm,
    takeover_of: confirm ? shownHolder : "",
    device: DEVICE,
  };
  $("signin-btn").disabled = true;
  const r = await api("POST", "/api/login", body);
  $("signin-btn").disabled = false;
  if (r.status === 200) {
    start(r.data);
    return;
  }
  if (r.data.outcome === "login_in_use") {
    const h = r.data.holder ?? {};
    shownHolder = h.session_id ?? "";
    $("confirm-text").textContent = r.data.message;
    $("confirm-detail").textContent =
      `${h.login} is signed in${h.station ? ` at ${h.station}` : ""} (${h.client}, ${h.state}) since ${when(h.created_at_ms)}. ` +
      "Continuing signs that session out.";
    $("confirm").hidden = false;
    $("confirm-yes").focus();
    return;
  }
  if (r.data.outcome === "station_in_use") {
    signinError(r.data.message);
    loadStations();
    return;
  }
  signinError(r.data.message ?? `Sign-in failed (HTTP ${r.status}).`);
}

// --- signed in ----------------------------------------------------------------

function start(login) {
  me = login;
  saveSignIn(login);
  $("who").textContent = `${login.name} (${login.login})`;
  $("agent-name").textContent = login.name;
  $("agent-station").textContent = login.station || "no station";
  $("agent-status").textContent = "—";
  $("session-info").textContent = "";
  $("tab-role").textContent = "";
  $("notices").replaceChildren();
  markStatus(null);
  const supervisor = login.role === "supervisor";
  show(supervisor ? ["agent", "supervisor"] : ["agent"]);

  const c = connect(login.ws_url, login.token, { singleTab: SINGLE_TAB });
  client = c;
  client.on("connectivity", setConnectivity);
  client.on("welcome", (w) => {
    $("session-info").textContent =
      `Session ${w.session_id.slice(0, 8)}…, generation ${w.generation}` + (w.resumed ? " — resumed after a reconnect" : "");
    $("tab-role").textContent = c.tabRole === "leader"
      ? "This tab holds the connection for every tab of this browser."
      : c.tabRole === "follower" ? "This tab shares the connection of another tab." : "";
    if (supervisor) loadAgents();
  });
  client.on("tabRefused", (r) => ended(r.message, false));
  client.on("notice", addNotice);
  client.on("forcedLogout", (f) => ended(f.message));
  client.on("presence", onPresence);
  client.on("error", (e) => console.warn("turnstile:", e.code, e.message));
  client.on("stopped", (s) => {
    if (s.reason === "rejected" || s.reason === "gave_up" || s.reason === "connect_failed") {
      ended("Your session has ended. Please sign in again.");
    } else if (s.reason === "logged_out" && client === c) {
      signedOut(); // signed out in another tab
    }
  });
  if (supervisor) client.watchPresence();
}

/** Two banners: the agent's own network (cause "network") or our backend (cause "server"). */
function setConnectivity(state, detail) {
  const cause = detail?.cause ?? (state === "degraded" ? "network" : null);
  $("net-banner").hidden = cause !== "network";
  $("svc-banner").hidden = cause !== "server";
  $("conn").textContent = state;
  $("conn").className = `conn ${state}`;
}

/** Shows the signed-out card; `forget`: the session is over, so other tabs must not reuse it either. */
function ended(message, forget = true) {
  client = null;
  me = null;
  if (forget) saveSignIn(null);
  $("ended-title").textContent = forget ? "Signed out" : "Already open in another tab";
  $("who").textContent = "";
  $("net-banner").hidden = true;
  $("svc-banner").hidden = true;
  $("ended-message").textContent = message;
  show(["ended"]);
}

function markStatus(status) {
  for (const b of $("status-buttons").querySelectorAll("button")) {
    b.classList.toggle("active", b.dataset.status === status);
  }
}

function addNotice(n) {
  const box = $("notices");
  let el = [...box.children].find((c) => c.dataset.id === n.id);
  if (!el) {
    el = document.createElement("div");
    el.dataset.id = n.id;
    const text = document.createElement("span");
    text.className = "text";
    const ack = document.createElement("button");
    ack.type = "button";
    ack.className = "ack";
    ack.textContent = "OK";
    ack.addEventListener("click", () => {
      client?.ack(n.id);
      el.remove();
    });
    el.append(text, ack);
    box.append(el);
  }
  el.className = `notice ${["info", "warning", "critical"].includes(n.severity) ? n.severity : "info"}`;
  el.querySelector(".text").textContent = n.text;
}

async function signOut() {
  const c = client;
  client = null;
  saveSignIn(null);
  const confirmed = c ? await c.logout() : false;
  if (!confirmed && me) await api("POST", "/api/logout", {}); // tell the broker through the login service
  signedOut();
}

function signedOut() {
  client = null;
  saveSignIn(null);
  me = null;
  $("who").textContent = "";
  setConnectivity("offline");
  $("notices").replaceChildren();
  show(["signin"]);
  loadStations();
}

// --- supervisor ---------------------------------------------------------------

async function loadAgents() {
  const r = await api("GET", "/api/agents");
  if (r.status !== 200) {
    $("notify-result").textContent = r.data.message ?? `Cannot list agents (HTTP ${r.status}).`;
    return;
  }
  for (const a of r.data.agents) {
    agents.set(a.login, { ...a, updatedAt: a.session ? a.session.last_seen_ms : 0 });
  }
  renderAgents();
}

function onPresence(p) {
  const row = agents.get(p.session.login) ?? { login: p.session.login, name: p.session.login, updatedAt: 0 };
  if (p.at_ms < row.updatedAt) return; // older than the snapshot
  row.updatedAt = p.at_ms;
  row.session = p.change === "ended" ? null : p.session;
  agents.set(row.login, row);
  renderAgents();
}

function renderAgents() {
  const body = $("agents").querySelector("tbody");
  body.replaceChildren();
  for (const a of [...agents.values()].sort((x, y) => x.login.localeCompare(y.login))) {
    const tr = document.createElement("tr");
    tr.dataset.login = a.login;
    const s = a.session;
    const cells = [
      `${a.name} (${a.login})`,
      s?.station ?? "—",
      s ? s.state : "signed out",
      s?.status || "—",
    ];
    for (const [i, text] of cells.entries()) {
      const td = document.createElement("td");
      td.textContent = text;
      if (i === 2) td.className = `state state-${s ? s.state : "signed-out"}`;
      if (i === 3) td.className = "status";
      tr.append(td);
    }
    const actions = document.createElement("td");
    for (const [kind, label] of [["password_expiry", "Password"], ["license_expiry", "License"]]) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = `notify-${kind}`;
      b.textContent = label;
      b.addEventListener("click", () => notify(a.login, kind));
      actions.append(b);
    }
    tr.append(actions);
    body.append(tr);
  }
}

async function notify(login, kind) {
  const days = Number($("notice-days").value);
  const r = await api("POST", "/api/notify", { login, kind, days });
  $("notify-result").textContent = r.status === 200
    ? `Notice ${r.data.notice_id}: delivered to ${r.data.delivered}, queued for ${r.data.queued}.`
    : r.data.message ?? `Notify failed (HTTP ${r.status}).`;
}

// --- demo network ---------------------------------------------------------------

async function setNetwork(mode) {
  const r = await api("POST", "/api/netsim", { mode });
  $("netsim-mode").textContent = r.data.mode ?? "?";
}

async function setBackend(state) {
  const r = await api("POST", "/api/backend", { state });
  $("backend-state").textContent = r.data.state ?? "?";
}

// --- wiring ---------------------------------------------------------------------

$("signin-form").addEventListener("submit", (e) => {
  e.preventDefault();
  signIn(false);
});
$("confirm-yes").addEventListener("click", () => signIn(true));
$("confirm-no").addEventListener("click", () => {
  $("confirm").hidden = true;
});
$("refresh-stations").addEventListener("click", loadStations);
$("status-buttons").addEventListener("click", (e) => {
  const status = e.target?.dataset?.status;
  if (!status || !client) return;
  client.setStatus(status);
  $("agent-status").textContent = status;
  markStatus(status);
});
$("logout").addEventListener("click", signOut);
$("signin-again").addEventListener("click", () => {
  show(["signin"]);
  signinError("");
  loadStations();
});
$("reconnect-now").addEventListener("click", () => client?.reconnectNow());
$("net-stall").addEventListener("click", () => setNetwork("stall"));
$("net-cut").addEventListener("click", () => setNetwork("cut"));
$("net-up").addEventListener("click", () => setNetwork("up"));
$("backend-degrade").addEventListener("click", () => setBackend("degraded"));
$("backend-ok").addEventListener("click", () => setBackend("ok"));
$("notify-all-license").addEventListener("click", () => notify("", "license_expiry"));

api("GET", "/api/netsim").then((r) => ($("netsim-mode").textContent = r.data.mode ?? "?"));
api("GET", "/api/backend").then((r) => ($("backend-state").textContent = r.data.state ?? "?"));
loadStations();
// Another tab of this browser is signed in: join its session.
const saved = savedSignIn();
if (saved) start(saved);
