// Packaging: `npm pack` of this directory yields a package a bundler or
// Node can import by name, with its types. The tarball is unpacked into a
// small consumer project in a temporary directory and imported from there,
// in a separate node process, as an application would.

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const PKG_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..");
/** The bound on each child process (npm pack, tar, node). */
const CHILD_MS = 60_000;

test("npm pack yields an importable package with its types", (t) => {
  const tmp = mkdtempSync(join(tmpdir(), "turnstile-pack-"));
  t.after(() => rmSync(tmp, { recursive: true, force: true }));
  const run = (cmd, args, cwd) => execFileSync(cmd, args, { cwd, encoding: "utf8", timeout: CHILD_MS,
    env: { ...process.env, npm_config_loglevel: "error", npm_config_update_notifier: "false" } });

  const [packed] = JSON.parse(run("npm", ["pack", "--json", "--pack-destination", tmp], PKG_DIR));
  const files = packed.files.map((f) => f.path).sort();
  assert.deepEqual(files, ["README.md", "emitter.js", "package.json", "schema/frames.schema.json", "tabs.d.ts", "tabs.js", "turnstile.d.ts", "turnstile.js"]);

  // The consumer: node_modules/turnstile-client is the unpacked tarball.
  const consumer = join(tmp, "consumer");
  const installed = join(consumer, "node_modules", packed.name);
  mkdirSync(installed, { recursive: true });
  run("tar", ["-xzf", join(tmp, packed.filename), "-C", installed, "--strip-components=1"], tmp);
  writeFileSync(join(consumer, "package.json"), JSON.stringify({ name: "consumer", private: true, type: "module" }));
  writeFileSync(join(consumer, "main.js"), `
    import { connect, backoffDelay, FINAL_CLOSE_CODES, TurnstileClient } from "turnstile-client";
    import { TabClient, tabSupport } from "turnstile-client/tabs";
    class FakeWebSocket { constructor(url) { this.url = url; this.readyState = 0; } close() { this.readyState = 3; } }
    const c = connect("ws://broker.test/v1/ws", "t", { WebSocket: FakeWebSocket, network: null });
    const ok = c instanceof TurnstileClient && typeof TabClient === "function" && tabSupport() === null
      && backoffDelay(0, 500, 30000, () => 0.5) === 250 && FINAL_CLOSE_CODES.includes(4001);
    c.close();
    console.log(JSON.stringify({ ok }));
  `);
  assert.deepEqual(JSON.parse(run(process.execPath, ["main.js"], consumer)), { ok: true });

  // Types: every `types` the manifest names is in the package, and each
  // declaration file's relative imports resolve to a shipped .d.ts.
  const manifest = JSON.parse(readFileSync(join(installed, "package.json"), "utf8"));
  const typePaths = [manifest.types, ...Object.values(manifest.exports).map((e) => e.types).filter(Boolean)];
  assert.ok(typePaths.length >= 3);
  for (const p of typePaths) assert.ok(existsSync(join(installed, p)), `${p} is in the package`);
  for (const dts of files.filter((f) => f.endsWith(".d.ts"))) {
    const src = readFileSync(join(installed, dts), "utf8");
    for (const [, spec] of src.matchAll(/from "(\.\/[^"]+)\.js"/g)) {
      assert.ok(existsSync(join(installed, `${spec}.d.ts`)), `${dts} imports ${spec}.js, whose types ship`);
    }
  }
});
