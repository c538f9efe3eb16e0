// The doctor's page through a drain of its room's node: opened on node A (which holds the room,
// the cabin publishing there), it sees the cabin's video and vitals; the test's operator then
// drains A (`POST /api/drain`): the page is told to move, opens its session on B and closes the
// one on A. Measured by the page itself: the largest gap between video frames presented on the
// room camera tile (requestVideoFrameCallback), from 1 s before the drain until 30 frames after
// the move, and the vitals that arrived after the drain.
//
// MODE=kill: node A is killed instead (SIGKILL of KILL_PID): the page notices (heartbeat),
// asks B, and its video and vitals come back; measured: when the first frame and the first
// vitals update came after the kill, and the oximeter's measurement sequence as shown
// (complete, none twice).
//
// MODE=late: a node joins after the page loaded (READY_FILE tells the test when), takes the room
// when A is killed, and the page reopens there.
//
// Env: CABINE_URL (node A), NEW_URL (node B), ROOM, DOCTOR_TOKEN, OPERATOR_TOKEN; KILL_PID with
// MODE=kill or late; READY_FILE (optional with kill, needed with late). Optional: CHROMIUM, STEP_TIMEOUT_MS (default 30000).
// Prints one JSON line `{"ok":...}`; exit status 0 when ok.

import { rmSync, writeFileSync } from "node:fs";
import { driver, env, inbound, launchPage, sleep } from "./harness.mjs";

const { result, finish, until, log } = driver("failover", ["DOCTOR_TOKEN", "OPERATOR_TOKEN"]);

// Frames the page must present after a move ends (the old session closed) before the gap is
// measured: about a second of video, time for a freeze after the close to show.
const AFTER_MOVE_FRAMES = 30;

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
    let page;
    ({ context, dir: userDataDir, page } = await launchPage("cabine-failover-", { width: 1024, height: 700 },
      [new URL(base).origin, next], consoleLines));
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
      // RTP arrival: every 50 ms, whether any subscribe connection (the current one, and the
      // old one while the page moves) received video packets since the last look.
      window.__rtp = [];
      const seen = new Map();
      let busy = false;
      setInterval(async () => {
        if (busy) return;
        busy = true;
        try {
          const s = window.cabine.session;
          const pcs = [s.sub, s.moving && s.moving.sub].filter(Boolean);
          let grew = false;
          for (const pc of pcs) {
            let n = 0;
            (await pc.getStats()).forEach((r) => { if (r.type === "inbound-rtp" && r.kind === "video") n += r.packetsReceived || 0; });
            if (n > (seen.get(pc) || 0)) grew = true;
            seen.set(pc, n);
          }
          if (grew) window.__rtp.push(performance.now());
        } finally { busy = false; }
      }, 50);
      window.__vitals = [];
      let last = "";
      setInterval(() => {
        const x = window.cabine.state.vitals.spo2;
        const key = x ? `${x.seq}/${x.time}` : "";
        if (key && key !== last) { last = key; window.__vitals.push(performance.now()); }
      }, 50);
    });
    // A baseline: frames presented and video packets seen over at least the second before
    // what the scenario does next.
    result.stage = "baseline";
    await until(page, "baseline", () => ({
      frames: window.__frames.length, rtp: window.__rtp.length,
      span: window.__frames.length ? performance.now() - window.__frames[0] : 0,
    }), (b) => b.span >= 1000 && b.frames > 5 && b.rtp > 5, step);

    if (process.env.MODE === "kill") return await killed(page, step, { next, room, token });
    if (process.env.MODE === "late") return await lateTakesOver(page, step);
    if (process.env.MODE === "restart") return await restarted(page, base, step);

    result.stage = "drain";
    const drainAt = await page.evaluate(() => (window.__drainAt = performance.now()));
    const r = await fetch(`${base}/api/drain`, { method: "POST", headers: { authorization: `Bearer ${operator}` } });
    if (r.status !== 204) throw new Error(`POST /api/drain: ${r.status}`);
    log("node A draining");

    result.stage = "move";
    await until(page, "moved", () => ({ base: window.cabine.session.base || "", moving: !!window.cabine.session.moving }),
      (s) => s.base === new URL(env("NEW_URL")).origin && !s.moving, step);
    // Observed until the page has presented AFTER_MOVE_FRAMES frames since the move ended (the
    // old session closed) and the vitals came at least twice since the drain.
    await page.evaluate(() => (window.__movedAt = performance.now()));
    await until(page, "after_move", () => ({
      frames: window.__frames.filter((x) => x > window.__movedAt).length,
      vitals: window.__vitals.filter((x) => x > window.__drainAt).length,
    }), (a) => a.frames >= AFTER_MOVE_FRAMES && a.vitals >= 2, step);

    result.stage = "measure";
    const m = await page.evaluate((t0) => {
      const f = window.__frames.filter((t) => t >= t0 - 1000);
      let gap = 0;
      for (let i = 1; i < f.length; i++) gap = Math.max(gap, f[i] - f[i - 1]);
      const now = performance.now();
      if (f.length) gap = Math.max(gap, now - f[f.length - 1]);
      const r = window.__rtp.filter((t) => t >= t0 - 1000);
      let rtpGap = 0;
      for (let i = 1; i < r.length; i++) rtpGap = Math.max(rtpGap, r[i] - r[i - 1]);
      if (r.length) rtpGap = Math.max(rtpGap, now - r[r.length - 1]);
      return {
        rtp_gap_ms: Math.round(rtpGap),
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

// A single node stopped (SIGTERM of RESTART_PID) and started again by the test on the same
// ports: when video and vitals come back after the node answers /healthz again, without a
// reload of the page; the oximeter's sequence as shown.
async function restarted(page, base, step) {
  result.stage = "terminate";
  process.kill(Number(env("RESTART_PID")), "SIGTERM");
  log("SIGTERM sent");
  const healthy = async () => {
    try { return (await fetch(`${base}/healthz`)).status === 200; } catch (_) { return false; }
  };
  let deadline = Date.now() + step * 2;
  while (await healthy()) {
    if (Date.now() > deadline) throw new Error("the node never went down");
    await sleep(50);
  }
  log("node down");
  deadline = Date.now() + step * 2;
  while (!(await healthy())) {
    if (Date.now() > deadline) throw new Error("the node never came back");
    await sleep(50);
  }
  await page.evaluate(() => (window.__healthyAt = performance.now()));
  log("node answers /healthz again");
  result.stage = "back";
  const probe = () => {
    const t0 = window.__healthyAt;
    const f = window.__frames.filter((t) => t > t0), v = window.__vitals.filter((t) => t > t0);
    const r = window.__rtp.filter((t) => t > t0);
    return { video: f.length ? Math.round(f[0] - t0) : null, vitals: v.length ? Math.round(v[0] - t0) : null, rtp: r.length ? Math.round(r[0] - t0) : null, frames: f.length };
  };
  const back = await until(page, "back", probe, (b) => b.video !== null && b.vitals !== null && b.frames > 10, step * 2);
  result.checks.video_back_ms = back.video;
  result.checks.vitals_back_ms = back.vitals;
  result.checks.rtp_back_ms = back.rtp;
  const seq = await settledSequence(page, step * 2);
  Object.assign(result.checks, seq);
  log(`measured ${JSON.stringify({ back, seq })}`);
  checkSequence(seq);
  const reloaded = await page.evaluate(() => performance.now() < window.__healthyAt);
  if (reloaded) throw new Error("the page was reloaded");
  result.stage = "done";
  finish(true, "video and vitals back after the restart, no reload; the oximeter sequence complete, none twice");
  return 0;
}

// Run in the page: the oximeter's measurement sequence as shown.
function oximeterSequence() {
  const st = window.cabine.state;
  let seqs = [];
  for (const [k, c] of st.channels) {
    if (c.device_kind !== "pulse_oximeter") continue;
    const [source, channel] = k.split("/");
    const these = st.measured
      .map((x) => x.split("/"))
      .filter((p) => p[0] === source && p[2] === channel)
      .map((p) => `${p[1]}/${p[3]}`);
    if (these.length > seqs.length) seqs = these;
  }
  const dup = seqs.length - new Set(seqs).size;
  const nums = seqs.map((x) => Number(x.split("/")[1])).sort((a, b) => a - b);
  const missing = [];
  for (let i = 1; i < nums.length; i++) for (let n = nums[i - 1] + 1; n < nums[i]; n++) missing.push(n);
  return {
    oximeter_shown: nums.length, oximeter_first: nums[0], oximeter_last: nums[nums.length - 1],
    oximeter_missing: missing, oximeter_duplicates: dup,
    epochs: new Set(seqs.map((x) => x.split("/")[0])).size, duplicates_dropped: st.duplicatesDropped,
  };
}

// The oximeter's sequence once complete, or as it stands after `ms`: the measurements the kiosk
// held during the gap are resent on its new session and may arrive after its first new ones.
async function settledSequence(page, ms) {
  const deadline = Date.now() + ms;
  for (;;) {
    const m = await page.evaluate(oximeterSequence);
    if ((m.oximeter_shown >= 10 && !m.oximeter_missing.length) || Date.now() > deadline) return m;
    await sleep(100);
  }
}

function checkSequence(m) {
  if (m.oximeter_shown < 10) throw new Error(`only ${m.oximeter_shown} oximeter measurements shown`);
  if (m.oximeter_duplicates) throw new Error(`${m.oximeter_duplicates} oximeter measurements shown twice`);
  if (m.oximeter_missing.length) throw new Error(`oximeter measurements missing: ${m.oximeter_missing.join(",")}`);
}

// Node A killed: when video and vitals come back, and the oximeter sequence shown.
async function killed(page, step, { next, room, token }) {
  if (process.env.READY_FILE) await lateNode(page, step);
  result.stage = "kill";
  const killAt = await page.evaluate(() => (window.__killAt = performance.now()));
  process.kill(Number(env("KILL_PID")), "SIGKILL");
  log("node A killed");
  result.stage = "back";
  await until(page, "moved", () => ({ base: window.cabine.session.base || "", moving: !!window.cabine.session.moving }),
    (s) => s.base === new URL(env("NEW_URL")).origin && !s.moving, step * 2);
  // Video and vitals back: a frame, and a vitals update, 2 s after the kill at the latest
  // (what was in flight at the kill arrives within ~100 ms).
  const probe = () => {
    const t0 = window.__killAt;
    const after = (xs) => xs.filter((t) => t > t0 + 1000);
    const f = after(window.__frames), v = after(window.__vitals);
    return { video: f.length ? Math.round(f[0] - t0) : null, vitals: v.length ? Math.round(v[0] - t0) : null, frames: f.length };
  };
  await until(page, "back", probe, (b) => b.video !== null && b.vitals !== null && b.frames > 10, step * 2);
  const back = await page.evaluate(probe);
  // Back means after the gap: the first frame and vitals update after the largest gap since
  // the kill.
  const m = await page.evaluate((t0) => {
    const firstAfterGap = (xs) => {
      const s = xs.filter((t) => t > t0 - 1);
      let best = 0, at = null, prev = t0;
      for (const t of s) { if (t - prev > best) { best = t - prev; at = t; } prev = t; }
      return at === null ? null : Math.round(at - t0);
    };
    return { video_back_ms: firstAfterGap(window.__frames), vitals_back_ms: firstAfterGap(window.__vitals), rtp_back_ms: firstAfterGap(window.__rtp) };
  }, killAt);
  Object.assign(m, await settledSequence(page, step * 2));
  Object.assign(result.checks, m, { first_after_kill: back });
  log(`measured ${JSON.stringify(m)}`);
  checkSequence(m);
  await shareStillAfterMove(page, step, { next, room, token });
  result.stage = "done";
  finish(true, "video and vitals back on B after A's death; the oximeter sequence complete, none twice; a still shared and shown through B");
  return 0;
}

// A node joins the cluster after the page loaded: the driver says it is ready (READY_FILE,
// which the test waits for before starting the node), then waits until the page's node list
// (refreshed over its heartbeat) names a node it did not know at that moment.
// MODE=late: a node that joined after the page loaded takes the room when A is killed. The
// page, whose content-security policy predates that node, skips it while looking for the room,
// is redirected to it by B, and reopens itself there (the same link): the kiosk's video and
// vitals show on the page served by the late node.
async function lateTakesOver(page, step) {
  await lateNode(page, step);
  const late = result.checks.late_nodes[0];
  result.stage = "kill";
  process.kill(Number(env("KILL_PID")), "SIGKILL");
  log("node A killed");
  result.stage = "reopened";
  const deadline = Date.now() + step * 2;
  while (new URL(page.url()).origin !== new URL(late).origin) {
    if (Date.now() > deadline) throw new Error(`the page never opened on the late node ${late}: it is at ${new URL(page.url()).origin}`);
    await sleep(100);
  }
  await page.waitForLoadState();
  log(`the page reopened on ${late}`);
  result.stage = "back";
  await until(page, "video_on_late_node", inbound, (s) => (s["room-camera"]?.frames || 0) > 5, step * 2);
  await until(page, "vitals_on_late_node", () => window.cabine.state.vitals, (v) => v.spo2 && v.pulse, step * 2);
  const on = await page.evaluate(() => ({ origin: location.origin, base: window.cabine.session.base || "", state: window.cabine.session.state }));
  result.checks.page_on = on;
  result.stage = "done";
  finish(true, "the late node took the room after A's death; the page reopened there with the kiosk's video and vitals");
  return 0;
}

async function lateNode(page, step) {
  result.stage = "late_node";
  const before = await page.evaluate(() => window.cabine.session.nodes || []);
  writeFileSync(env("READY_FILE"), "ready\n");
  log(`ready for a late node; the page knows ${before.join(" ")}`);
  const now = await until(page, "late_node_known", () => window.cabine.session.nodes || [],
    (n) => n.some((u) => !before.includes(u)), step * 2);
  result.checks.nodes_before = before;
  result.checks.late_nodes = now.filter((u) => !before.includes(u));
}

// After the move, the doctor shares the still it looks at: the upload, the `still_shared` the
// room gets and the page's fetch of the image go to the node the session is on now (the first
// node is dead), which lists the still.
async function shareStillAfterMove(page, step, { next, room, token }) {
  result.stage = "share_still";
  await page.evaluate(() => {
    const c = document.createElement("canvas");
    c.width = 64; c.height = 48;
    const g = c.getContext("2d");
    g.fillStyle = "#3a6"; g.fillRect(0, 0, 64, 48);
    document.getElementById("still").src = c.toDataURL("image/png");
  });
  await until(page, "still_loaded", () => document.getElementById("still").naturalWidth, (w) => w > 0, step);
  await page.evaluate(() => document.getElementById("share-still").click());
  const shared = await until(page, "still_shared", () => ({
    button: document.getElementById("share-still").textContent,
    shown: window.cabine.assist.sharedStills.filter((s) => s.shown).map((s) => s.id),
    errors: window.cabine.assist.errors,
  }), (x) => x.shown.length > 0 || x.errors.length > 0, step);
  if (!shared.shown.length) throw new Error(`the still was not shared and shown after the move: ${JSON.stringify(shared)}`);
  const r = await fetch(`${next}/api/rooms/${encodeURIComponent(room)}/stills`, { headers: { authorization: `Bearer ${token}` } });
  const listed = r.ok ? (await r.json()).stills.map((s) => s.id) : [];
  result.checks.still_on_new_node = listed.includes(shared.shown[0]);
  if (!result.checks.still_on_new_node) throw new Error(`the new node does not list the shared still (${r.status}: ${listed})`);
}

process.exit(await main().catch((e) => { finish(false, String(e)); return 1; }));
