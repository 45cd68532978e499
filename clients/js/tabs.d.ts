// Types of tabs.js: one socket per browser for all its tabs. See docs/clients.md.

import type { Connectivity, ConnectivityCause, Events, Options, Welcome } from "./turnstile.js";

/** leader: this tab holds the session's socket; follower: another tab does and relays. */
export type TabRole = "leader" | "follower";

/** Why a tab opened no socket (option `singleTab`). */
export interface TabRefused {
  /** A sentence for the person. */
  message: string;
}

/** Web Locks and BroadcastChannel as tabs.js uses them; inject fakes in tests. */
export interface TabSupport {
  locks: {
    request(name: string, options: { signal?: AbortSignal; ifAvailable?: boolean },
      callback: (lock: unknown | null) => unknown): Promise<unknown>;
  };
  BroadcastChannel: new (name: string) => {
    postMessage(data: unknown): void;
    close(): void;
    onmessage: ((ev: { data: unknown }) => void) | null;
  };
  /** Where "pagehide" fires (a leader hands over then); default window. */
  page?: { addEventListener(type: "pagehide", fn: () => void): void; removeEventListener?(type: "pagehide", fn: () => void): void } | null;
}

/** The events a client emits, relayed from the leader tab to every tab. */
export declare const EVENTS: readonly (keyof Events)[];

/** The Web Locks and BroadcastChannel to share with, or null (Node, old browsers, insecure pages). */
export declare function tabSupport(options?: Options): TabSupport | null;

/**
 * One tab's client when tabs share the socket (what connect() returns in a
 * browser by default): the same API and events as TurnstileClient.
 */
export declare class TabClient {
  on<K extends keyof Events>(event: K, fn: (data: Events[K]) => void): () => void;
  off<K extends keyof Events>(event: K, fn: (data: Events[K]) => void): void;
  readonly connectivity: Connectivity;
  /** Whose fault a degraded connectivity is ("network" or "server"), as the leader tab's client saw it; null when online or offline. */
  readonly connectivityCause: ConnectivityCause | null;
  readonly session: Welcome | null;
  readonly stopped: boolean;
  readonly rttMs: number | null;
  /** null until this tab knows (and in a refused tab). */
  readonly tabRole: TabRole | null;
  /** In a follower: relayed to the leader; true when the leader is online. */
  setStatus(status: string): boolean;
  ack(noticeId: string): boolean;
  watchPresence(): void;
  /** Ends the session for every tab. */
  logout(): Promise<boolean>;
  /** This tab stops; another tab takes over the socket if this one held it. */
  close(): void;
  reconnectNow(): void;
}

/** The shared client, or null when tabs do not share here. */
export declare function connectAcrossTabs(url: string, token: string, options: Options,
  makeClient: (options: Options) => unknown): TabClient | null;
