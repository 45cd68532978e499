// Types of the turnstile browser SDK (turnstile.js). See docs/clients.md.

import type { TabClient, TabRefused, TabSupport } from "./tabs.js";
export type { TabClient, TabRefused, TabRole, TabSupport } from "./tabs.js";

/** online: welcomed socket; degraded: connection lost and reconnecting (cause "network"), or the broker said it cannot vouch for the session now (cause "server"); offline: not connected and not trying (before the first welcome, or stopped). */
export type Connectivity = "online" | "degraded" | "offline";

/** Whose fault a degraded connectivity is: "network" when the SDK lost the socket itself, "server" when the broker said so. */
export type ConnectivityCause = "network" | "server";

/** The second argument of a `connectivity` listener. */
export interface ConnectivityDetail {
  state: Connectivity;
  /** null when online or offline. */
  cause: ConnectivityCause | null;
  /** With cause "server": the broker's reason ("redis_unreachable", "subscription_lost", "lease_unconfirmed", or a newer one). */
  serverCause?: string;
  /** With cause "server": when the broker became degraded (Unix ms), or null if it did not say. */
  sinceMs?: number | null;
}

/** The first frame of every live socket. */
export interface Welcome {
  type: "welcome";
  session_id: string;
  tenant: string;
  login: string;
  station: string | null;
  generation: number;
  /** True when this socket brought a DISCONNECTED session back within grace. */
  resumed: boolean;
  heartbeat_ms: number;
  grace_ms: number;
}

export interface Notice {
  id: string;
  kind: string;
  severity: "info" | "warning" | "critical" | string;
  text: string;
  data: Record<string, unknown> | null;
  expires_at_ms: number;
}

export interface ForcedLogout {
  reason: "superseded" | "station_changed" | "evicted" | "expired" | string;
  /** The text to show the person, as the broker words it. */
  message: string;
  by: { client: string; station: string | null; at_ms: number } | null;
}

export interface PresenceSession {
  session_id: string;
  login: string;
  station: string | null;
  client: string;
  role: string;
  state: "pending" | "connected" | "disconnected" | "ended";
  status: string;
  generation: number;
  end_reason: string | null;
}

export interface Presence {
  type: "presence";
  change: "claimed" | "connected" | "disconnected" | "reconnected" | "status_changed" | "ended";
  session: PresenceSession;
  status: string;
  at_ms: number;
  /** The tenant's event-log sequence number of this change. */
  seq: number;
}

/** Presence changes may have been lost on the way: re-read the state, keep applying `presence`. */
export interface PresenceGap {
  type: "gap";
  reason: string;
}

export interface TurnstileError {
  /** A broker error code (invalid_token, forbidden, rejected, ...) or an SDK one (bad_frame, connect_failed, reconnect_exhausted). */
  code: string;
  message: string;
}

export interface Reconnecting {
  /** Failed attempts in a row so far (0 for a planned reconnect after a `reconnect` frame). */
  attempt: number;
  delayMs: number;
  reason: string;
}

export interface Stopped {
  reason:
    | "forced_logout"
    | "logged_out"
    | "logout_unconfirmed"
    | "closed"
    | "rejected"
    | "gave_up"
    | "connect_failed"
    /** singleTab: another tab holds the session. */
    | "tab_refused";
  /** The close code that stopped the client, when one did. */
  code: number | null;
}

/** Extra arguments a listener of each event receives after the first. */
export interface EventExtras {
  connectivity: [detail: ConnectivityDetail];
}

type Extra<K> = K extends keyof EventExtras ? EventExtras[K] : [];

export interface Events {
  welcome: Welcome;
  /** singleTab: another tab of this browser holds the session; this one opened no socket and stopped. */
  tabRefused: TabRefused;
  notice: Notice;
  forcedLogout: ForcedLogout;
  connectivity: Connectivity;
  presence: Presence;
  presenceGap: PresenceGap;
  loggedOut: Record<string, never>;
  error: TurnstileError;
  reconnecting: Reconnecting;
  stopped: Stopped;
}

/** The subset of the browser WebSocket the SDK uses. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onclose: ((ev: { code: number; reason?: string }) => void) | null;
}

export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(id: unknown): void;
  /** Milliseconds; must advance with setTimeout. */
  now(): number;
}

export interface Options {
  /** Tabs of one browser using the same session share one socket (Web Locks + BroadcastChannel; no effect where missing). Default true. */
  shareAcrossTabs?: boolean;
  /** Refuse this tab (event tabRefused) when another tab of the browser holds the session. Default false; wins over shareAcrossTabs. */
  singleTab?: boolean;
  /** Name of the tab group; default derived from the url and token (tabs of one session). */
  tabGroup?: string;
  /** Web Locks and BroadcastChannel to use; default the browser's. For tests. */
  tabs?: TabSupport;
  /** Ceiling of the first reconnect delay (ms), doubled per failed attempt. Default 500. */
  initialDelayMs?: number;
  /** Cap of the reconnect delay ceiling (ms). Default 30000. */
  maxDelayMs?: number;
  /** Reconnect attempts in a row without a welcome before giving up. Default Infinity. */
  maxAttempts?: number;
  /** How long a new socket may take to be welcomed (ms). Default 10000. */
  connectTimeoutMs?: number;
  /** Heartbeat until the first welcome gives the broker's (ms). Default 15000. */
  heartbeatMs?: number;
  /** How long logout() waits for the broker's confirmation (ms). Default 5000. */
  logoutTimeoutMs?: number;
  /** WebSocket constructor; default globalThis.WebSocket. */
  WebSocket?: new (url: string) => WebSocketLike;
  /** Timer functions; default the global ones and Date.now. */
  timers?: Partial<Timers>;
  /** Random source in [0, 1) for the jitter; default Math.random. */
  random?: () => number;
  /** Target of "online" events that skip the backoff wait; default window (when present). */
  network?: { addEventListener(type: "online", fn: () => void): void; removeEventListener?(type: "online", fn: () => void): void } | null;
  /** Called when a listener throws; default console.error. */
  onListenerError?: (err: unknown) => void;
}

export declare const FINAL_CLOSE_CODES: readonly number[];
export declare const DEFAULTS: Readonly<Required<Pick<Options,
  "initialDelayMs" | "maxDelayMs" | "maxAttempts" | "connectTimeoutMs" | "heartbeatMs" | "logoutTimeoutMs">>>;

/** Full-jitter delay before reconnect attempt `attempt` (0-based): uniform in [0, min(maxDelayMs, initialDelayMs * 2^attempt)). */
export declare function backoffDelay(attempt: number, initialDelayMs?: number, maxDelayMs?: number, random?: () => number): number;

export declare class TurnstileClient {
  constructor(url: string, token: string, options?: Options);
  /** `connectivity` listeners also get a {@link ConnectivityDetail} as a second argument. */
  on<K extends keyof Events>(event: K, fn: (data: Events[K], ...extra: Extra<K>) => void): () => void;
  off<K extends keyof Events>(event: K, fn: (data: Events[K], ...extra: Extra<K>) => void): void;
  readonly connectivity: Connectivity;
  /** Why connectivity is degraded ("network" or "server"); null when online or offline. */
  readonly connectivityCause: ConnectivityCause | null;
  readonly session: Welcome | null;
  readonly stopped: boolean;
  readonly rttMs: number | null;
  /** Sent now when online, else after the next welcome; true if sent now. */
  setStatus(status: string): boolean;
  /** Sent now when online, else after the next welcome; true if sent now. */
  ack(noticeId: string): boolean;
  /** Presence events for this socket and every later one (supervisor/admin only). */
  watchPresence(): void;
  /** Resolves true when the broker confirmed the logout; the client stops either way. */
  logout(): Promise<boolean>;
  /** Closes and stops reconnecting; the session stays live for its grace period. */
  close(): void;
  /** Skips the current backoff wait. */
  reconnectNow(): void;
}

/**
 * Opens an agent connection to `url` (ws://host:7700/v1/ws) with the connect token from Claim.
 * In a browser, tabs of one session share one socket (a TabClient, same API) unless shareAcrossTabs is false.
 */
export declare function connect(url: string, token: string, options?: Options): TurnstileClient | TabClient;
