// Headless Chromium (Debian's /usr/bin/chromium) through playwright-core.

import { chromium } from "playwright-core";

export const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/**
 * Launches Chromium. playwright's launch() gives every browser a fresh
 * temporary profile (user-data-dir) and deletes it on close; each
 * newContext() is a further isolated, incognito-like profile — one per
 * simulated person here.
 */
export function launch() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: 30_000,
  });
}
