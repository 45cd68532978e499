// What every browser-test file of the demo shares: where screenshots and
// failure artifacts go, the wait bounds, one Chromium per file and the
// demos it started, all stopped in the file's after hook.

import { after, before } from "node:test";
import { mkdir } from "node:fs/promises";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { launch } from "./browser.js";
import { startDemo } from "./demo.js";

const E2E = resolve(dirname(fileURLToPath(import.meta.url)), "..");
// SCREENSHOT_DIR lets CI write elsewhere, keeping the committed set intact.
export const SHOTS = process.env.SCREENSHOT_DIR ? resolve(process.env.SCREENSHOT_DIR) : resolve(E2E, "screenshots");
export const ARTIFACTS = resolve(E2E, "artifacts");

/** The bound on each single wait for a page or the broker. */
export const WAIT_MS = 15_000;
/** The bound on each whole test. */
export const TEST_MS = 90_000;

/**
 * Registers the file's before/after hooks: one browser, and every demo
 * started through the returned `demo()` stopped at the end at the latest.
 * `browser()` is the launched browser (after the before hook ran).
 */
export function suite() {
  let browser;
  const demos = [];
  before(async () => {
    await mkdir(SHOTS, { recursive: true });
    await mkdir(ARTIFACTS, { recursive: true });
    browser = await launch();
  });
  after(async () => {
    await Promise.allSettled(demos.map((d) => d.stop()));
    await browser?.close();
  });
  return {
    browser: () => browser,
    /** A demo for one test (1 s heartbeat). */
    demo: async () => {
      const d = await startDemo({ heartbeat: "1s" });
      demos.push(d);
      return d;
    },
  };
}
