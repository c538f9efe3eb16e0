// What the browser drivers share: logging with the time since start, one JSON result line with
// the tokens redacted, polling a page until a condition holds, the inbound statistics of a
// page's subscribe connection, and launching Debian's chromium with fake media devices.

import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function env(name) {
  const v = process.env[name];
  if (!v) throw new Error(`environment variable ${name} is required`);
  return v;
}

// A driver named `name` whose output must never show the values of the environment variables
// in `secrets` (tokens).
export function driver(name, secrets) {
  const t0 = Date.now();
  const result = { ok: false, stage: "setup", timings_ms: {}, checks: {} };
  const log = (m) => process.stderr.write(`[${name} +${((Date.now() - t0) / 1000).toFixed(1)}s] ${m}\n`);
  const redact = (text) => {
    let out = text;
    for (const n of secrets) {
      const t = process.env[n];
      if (t) out = out.split(t).join(`<${n}>`).split(encodeURIComponent(t)).join(`<${n}>`);
    }
    return out;
  };
  const finish = (ok, message) => {
    result.ok = ok;
    result.message = redact(message);
    result.timings_ms.total = Date.now() - t0;
    process.stdout.write(redact(JSON.stringify(result)) + "\n");
    process.stderr.write(`${name} ${ok ? "ok" : `FAILED at ${result.stage}`}: ${result.message}\n`);
  };
  // Polls `probe` (run in the page) until `ok(value)`; throws with the last value after `ms`.
  const until = async (page, what, probe, ok, ms) => {
    const deadline = Date.now() + ms;
    let v;
    for (;;) {
      v = await page.evaluate(probe);
      if (ok(v)) {
        result.checks[what] = v;
        result.timings_ms[what] = Date.now() - t0;
        log(`${what}: ${JSON.stringify(v)}`);
        return v;
      }
      if (Date.now() > deadline) throw new Error(`${what}: not reached after ${ms} ms; last ${JSON.stringify(v)}`);
      await sleep(250);
    }
  };
  return { t0, result, log, redact, finish, until };
}

// Run in a page (`page.evaluate(inbound)`): inbound statistics of its subscribe connection, by
// track label. A re-published track comes back on a new m-line with the same label: added up.
export const inbound = async () => {
  const s = window.cabine.session;
  const out = {};
  if (!s.sub) return out;
  (await s.sub.getStats()).forEach((r) => {
    if (r.type !== "inbound-rtp") return;
    const info = s.tracks.get(r.mid);
    const label = info ? info.label : `mid-${r.mid}`;
    const o = out[label] || { kind: r.kind, packets: 0, frames: 0, width: 0 };
    o.packets += r.packetsReceived || 0;
    o.frames += r.framesDecoded || 0;
    o.width = Math.max(o.width, r.frameWidth || 0);
    out[label] = o;
  });
  return out;
};

// Debian's chromium (or $CHROMIUM), headless, with fake camera and microphone, in a new
// profile directory under the system's temporary directory (the caller removes `dir`);
// `extraArgs` are more command-line flags.
export async function launchChromium(prefix, viewport, extraArgs = []) {
  const chromium = process.env.CHROMIUM || "/usr/bin/chromium";
  if (!existsSync(chromium)) throw new Error(`${chromium} not found (apt-get install chromium, or run .ci/run)`);
  const playwright = await import("playwright-core").catch((e) => {
    throw new Error(`playwright-core is not installed: run \`npm ci --prefix tests/browser\` (${e.message})`);
  });
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const context = await playwright.chromium.launchPersistentContext(dir, {
    executablePath: chromium,
    headless: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
      "--autoplay-policy=no-user-gesture-required",
      ...extraArgs,
    ],
    viewport,
    timeout: 30000,
  });
  return { context, dir };
}

// `launchChromium(prefix, viewport)` with camera and microphone granted on each of `origins`,
// and its first page, whose console messages and page errors are pushed to `consoleLines`.
// The caller closes `context` and removes `dir` (both already done if this throws).
export async function launchPage(prefix, viewport, origins, consoleLines) {
  const { context, dir } = await launchChromium(prefix, viewport);
  try {
    for (const origin of origins) {
      await context.grantPermissions(["camera", "microphone"], { origin }).catch(() => {});
    }
    const page = context.pages()[0] || (await context.newPage());
    page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
    page.on("pageerror", (e) => consoleLines.push(`pageerror: ${e.message}`));
    return { context, dir, page };
  } catch (e) {
    await context.close().catch(() => {});
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}

// Run in a page (interpolated as `(${selectedPair})("sub")`): the selected candidate pair of the
// session's `pc` ("sub"/"pub") as its local candidate's type, protocol, TCP type and relay
// protocol, and the remote candidate's protocol; null before one is selected.
export const selectedPair = async (which) => {
  const pc = window.cabine.session[which];
  if (!pc) return null;
  const stats = await pc.getStats();
  let pair = null;
  stats.forEach((r) => {
    if (r.type === "transport" && r.selectedCandidatePairId) pair = stats.get(r.selectedCandidatePairId);
  });
  if (!pair) stats.forEach((r) => { if (r.type === "candidate-pair" && r.nominated && r.state === "succeeded") pair = r; });
  if (!pair) return null;
  const local = stats.get(pair.localCandidateId);
  const remote = stats.get(pair.remoteCandidateId);
  return local
    ? {
        type: local.candidateType,
        protocol: local.protocol,
        tcpType: local.tcpType || "",
        relayProtocol: local.relayProtocol || "",
        remote: remote ? remote.protocol : "",
      }
    : null;
};
