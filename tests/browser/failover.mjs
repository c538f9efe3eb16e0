// The doctor's page through a drain of its room's node: opened on node A (which holds the room,
// the cabin publishing there), it sees the cabin's video and vitals; the test's operator then
// drains A (`POST /api/drain`): the page is told to move, opens its session on B and closes the
// one on A. Measured by the page itself: the largest gap between video frames presented on the
// room camera tile (requestVideoFrameCallback), from 1 s before the drain to 4 s after the
// move, and the vitals that arrived after the drain.
//
// Env: CABINE_URL (node A), NEW_URL (node B), ROOM, DOCTOR_TOKEN, OPERATOR_TOKEN. Optional:
// CHROMIUM, STEP_TIMEOUT_MS (default 30000).
// Prints one JSON line `{"ok":...}`; exit status 0 when ok.

import { rmSync } from "node:fs";
import { driver, env, inbound, launchChromium, sleep } from "./harness.mjs";

const { result, finish, until, log } = driver("failover", ["DOCTOR_TOKEN", "OPERATOR_TOKEN"]);

async function main() {
  const base = env("CABINE_URL").replace(/\/+$/, "");
  const next = new URL(env("NEW_URL")).origin;
  const room = env("ROOM");
  const token = env("DOCTOR_TOKEN");
  const operator = env("OPERATOR_TOKEN");
  const step = Number(process.env.STEP_TIMEOUT_MS || 30000);
  const consoleLines = [];
  let context;
  let userDataDir;
  try {
    result.stage = "launch";
    ({ context, dir: userDataDir } = await launchChromium("cabine-failover-", { width: 1024, height: 700 }));
    for (const origin of [new URL(base).origin, next]) {
      await context.grantPermissions(["camera", "microphone"], { origin }).catch(() => {});
    }
    const page = context.pages()[0] || (await context.newPage());
    page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
    page.on("pageerror", (e) => consoleLines.push(`pageerror: ${e.message}`));
    await page.goto(`${base}/consult/${encodeURIComponent(room)}#token=${encodeURIComponent(token)}`);

    result.stage = "video";
    await until(page, "room_camera_frames", inbound, (s) => (s["room-camera"]?.frames || 0) > 5, step * 2);
    result.stage = "vitals";
    await until(page, "vitals", () => window.cabine.state.vitals, (v) => v.spo2 && v.pulse, step);

    // Every frame the room camera tile presents, and every vitals update, with the page's clock.
    await page.evaluate(() => {
      const v = document.getElementById("room-camera");
      window.__frames = [];
      const onFrame = (now) => { window.__frames.push(now); v.requestVideoFrameCallback(onFrame); };
      v.requestVideoFrameCallback(onFrame);
      window.__vitals = [];
      let last = "";
      setInterval(() => {
        const x = window.cabine.state.vitals.spo2;
        const key = x ? `${x.seq}/${x.time}` : "";
        if (key && key !== last) { last = key; window.__vitals.push(performance.now()); }
      }, 50);
    });
    await sleep(1000);

    result.stage = "drain";
    const drainAt = await page.evaluate(() => performance.now());
    const r = await fetch(`${base}/api/drain`, { method: "POST", headers: { authorization: `Bearer ${operator}` } });
    if (r.status !== 204) throw new Error(`POST /api/drain: ${r.status}`);
    log("node A draining");

    result.stage = "move";
    await until(page, "moved", () => ({ base: window.cabine.session.base || "", moving: !!window.cabine.session.moving }),
      (s) => s.base === new URL(env("NEW_URL")).origin && !s.moving, step);
    await sleep(4000);

    result.stage = "measure";
    const m = await page.evaluate((t0) => {
      const f = window.__frames.filter((t) => t >= t0 - 1000);
      let gap = 0;
      for (let i = 1; i < f.length; i++) gap = Math.max(gap, f[i] - f[i - 1]);
      const now = performance.now();
      if (f.length) gap = Math.max(gap, now - f[f.length - 1]);
      return {
        max_gap_ms: Math.round(gap),
        frames_after_drain: f.filter((t) => t > t0).length,
        vitals_after_drain: window.__vitals.filter((t) => t > t0).length,
        tiles: Object.keys(window.cabine.state.tiles),
      };
    }, drainAt);
    Object.assign(result.checks, m);
    log(`measured ${JSON.stringify(m)}`);
    if (m.frames_after_drain < 10) throw new Error(`only ${m.frames_after_drain} frames after the drain`);
    if (m.vitals_after_drain < 2) throw new Error(`only ${m.vitals_after_drain} vitals updates after the drain`);

    result.stage = "done";
    finish(true, "moved to B with the room; video and vitals went on");
    return 0;
  } catch (e) {
    result.console = consoleLines.slice(-40);
    finish(false, e.message || String(e));
    return 1;
  } finally {
    if (context) await context.close().catch(() => {});
    if (userDataDir) rmSync(userDataDir, { recursive: true, force: true });
  }
}

process.exit(await main().catch((e) => { finish(false, String(e)); return 1; }));
