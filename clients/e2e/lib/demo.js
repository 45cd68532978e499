// Starts `turnstile demo` on free loopback ports and stops it again.

import { spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");

/** How long the demo may take to print its listening line. */
const START_TIMEOUT_MS = 20_000;
/** How long it may take to exit after SIGTERM before it is killed. */
const STOP_TIMEOUT_MS = 10_000;

/**
 * Runs the demo binary (TURNSTILE_BIN, default target/debug/turnstile) with
 * every listener on port 0 and returns its addresses once it is listening:
 * { url, http, grpc, netsim, stop() }.
 */
export async function startDemo({ heartbeat = "1s", grace = "60s" } = {}) {
  const bin = process.env.TURNSTILE_BIN ?? resolve(REPO, "target/debug/turnstile");
  if (!existsSync(bin)) throw new Error(`${bin} does not exist; run \`cargo build\` first (or set TURNSTILE_BIN)`);
  const child = spawn(bin, [
    "demo", "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0", "--demo-listen", "127.0.0.1:0",
    "--netsim-listen", "127.0.0.1:0", "--heartbeat", heartbeat, "--grace", grace,
    // stdin is a pipe from this process: if it dies without stopping the
    // demo (killed by a timeout, say), the pipe closes and the demo stops.
    "--exit-with-stdin",
  ], { stdio: ["pipe", "pipe", "pipe"], env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" } });

  let stderr = "";
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (d) => {
    stderr = (stderr + d).slice(-8000);
  });
  const exited = once(child, "exit");

  const lines = createInterface({ input: child.stdout });
  let timer;
  const listening = new Promise((resolveLine, reject) => {
    timer = setTimeout(() => reject(new Error(`the demo printed no listening line within ${START_TIMEOUT_MS} ms`)),
      START_TIMEOUT_MS);
    lines.on("line", (line) => {
      if (line.startsWith("turnstile demo listening ")) resolveLine(line);
    });
    exited.then(([code, signal]) => reject(new Error(`the demo exited (${code ?? signal}) before listening`)));
  });
  let line;
  try {
    line = await listening;
  } catch (e) {
    child.kill("SIGKILL");
    throw new Error(`${e.message}\nstderr:\n${stderr}`);
  } finally {
    clearTimeout(timer);
  }
  const field = (name) => {
    const m = line.match(new RegExp(`\\b${name}=(\\S+)`));
    if (!m) throw new Error(`no ${name}= in ${JSON.stringify(line)}`);
    return m[1];
  };

  let stopped = null;
  const stop = () => {
    stopped ??= (async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGTERM");
      const t = setTimeout(() => child.kill("SIGKILL"), STOP_TIMEOUT_MS);
      await exited;
      clearTimeout(t);
    })();
    return stopped;
  };
  return {
    url: field("demo"),
    http: field("http"),
    grpc: field("grpc"),
    netsim: field("netsim"),
    stderr: () => stderr,
    stop,
  };
}
