// The doctor's page stays truthful through blips (issue 12), in Debian's chromium against a real
// server and real `cabine-kiosk dial` processes that this driver starts (and stops, pauses,
// continues). One scenario per run, chosen by SCENARIO:
//
// - `two_kiosks`: kiosk-1 on the stage; kiosk-2 dials in and gets its own tile (kiosk-1's tile
//   keeps its element, the track it plays and rising frames; the vitals stay kiosk-1's);
//   kiosk-2 ends (SIGTERM): its tiles go, kiosk-1's never change; the rates shown stay
//   non-negative through the removal; /favicon.ico answers 200.
// - `pause`: kiosk-1 stopped 20 s (SIGSTOP) then continued (SIGCONT): the page's own times of
//   setting and clearing "Kiosk video interrupted" are reported with the driver's STOP/CONT
//   times (the Rust test asserts the delays); the quality dot is never green while frozen;
//   every condition clears once media and vitals are back.
// - `reload`: the doctor reloads the page (F5), then closes and reopens it; each time, once the
//   old page's sessions are gone on the server (polled through /api/rooms), no "left" / "lost
//   its connection" for the doctor's own identity was ever shown by the new page.
//
// Env: CABINE_URL, ROOM, DOCTOR_TOKEN, OPS_TOKEN, SCENARIO; KIOSK_BIN, KIOSK_TOKEN_1 and
// KIOSK_TOKEN_2 for the scenarios with kiosks. Optional: CHROMIUM, STEP_TIMEOUT_MS.
// Prints one JSON line `{"ok":...}`; exit status 0 when ok.

import { spawn } from "node:child_process";
import { rmSync } from "node:fs";
import { driver, env, launchChromium, sleep } from "./harness.mjs";

const secrets = ["DOCTOR_TOKEN", "OPS_TOKEN", "KIOSK_TOKEN_1", "KIOSK_TOKEN_2"];
const { result, log, finish, until } = driver("continuity", secrets);
const base = env("CABINE_URL").replace(/\/+$/, "");
const room = env("ROOM");
const step = Number(process.env.STEP_TIMEOUT_MS || 30000);
// Quality-dot updates the page must make while the kiosk is stopped (it updates about every
// 250 ms once it has a second of statistics): enough to say what the dot showed throughout.
const QUALITY_SAMPLES = 10;
const kiosks = [];

// A `cabine-kiosk dial` process: the room camera (small, to spare two cores), the microphone,
// the devices unless `devices` is false; bounded by --duration so that it never outlives a
// killed driver for long.
function dial(token, { devices = true, extra = [] } = {}) {
  const args = [
    "dial", "--server", base, "--loopback", "--no-subscribe", "--device-camera", "off",
    "--stethoscope", "off", "--fps", "10", "--video-kbps", "200", "--fixed-bitrate",
    "--duration", "300",
  ];
  if (!devices) args.push("--no-devices");
  args.push(...extra);
  const child = spawn(env("KIOSK_BIN"), args, {
    env: { ...process.env, CABINE_TOKEN: token, RUST_LOG: "warn" },
    stdio: ["ignore", "ignore", "pipe"],
  });
  child.lines = [];
  child.stderr.on("data", (d) => { child.lines.push(...String(d).split("\n").filter(Boolean)); child.lines.splice(0, Math.max(0, child.lines.length - 20)); });
  kiosks.push(child);
  return child;
}

// Run in the page: each tile (by `identity/slot`) with its element, the m-line whose received
// track the element really plays (`playing`), and the frames that m-line decoded so far.
const tiles = async () => {
  const s = window.cabine.session;
  const frames = {};
  if (s.sub) (await s.sub.getStats()).forEach((r) => { if (r.type === "inbound-rtp" && r.kind === "video") frames[r.mid] = r.framesDecoded || 0; });
  const receivers = s.sub ? s.sub.getTransceivers() : [];
  const out = {};
  for (const [key, t] of Object.entries(window.cabine.state.tiles)) {
    const src = t.element.srcObject;
    const shown = src ? src.getVideoTracks()[0] : null;
    const rx = receivers.find((x) => shown && x.receiver.track === shown);
    out[key] = {
      mid: t.mid, role: t.role, element: t.element.id || `strip:${t.element.dataset.key}`,
      playing: rx ? rx.mid : null, frames: frames[t.mid] || 0,
    };
  }
  out._strip = [...document.querySelectorAll("#peers [data-identity]")].map((e) => e.dataset.identity);
  return out;
};

async function openDoctor(context) {
  const page = context.pages()[0] || (await context.newPage());
  await page.goto(`${base}/consult/${encodeURIComponent(room)}#token=${encodeURIComponent(env("DOCTOR_TOKEN"))}`);
  return page;
}

// The page's kiosk-1 tile keeps its element and track, and its frames rise past `after`.
async function stageUnchanged(page, what, first, after) {
  const t = await until(page, what, tiles, (x) => x["kiosk-1/camera"] && x["kiosk-1/camera"].frames > after + 10, step);
  const now = t["kiosk-1/camera"];
  for (const k of ["mid", "element", "playing"]) {
    if (now[k] !== first[k]) throw new Error(`${what}: kiosk-1's tile changed its ${k}: ${JSON.stringify(first)} → ${JSON.stringify(now)}`);
  }
  return now;
}

async function twoKiosks(page) {
  result.stage = "kiosk_1";
  // Both cabins have devices; the second one's patient has a pulse of 130 (the first, 72).
  dial(env("KIOSK_TOKEN_1"), { extra: ["--heart-rate", "72"] });
  const t1 = await until(page, "kiosk_1_tile", tiles, (x) => x["kiosk-1/camera"]?.frames > 5, step * 2);
  const first = t1["kiosk-1/camera"];
  if (first.element !== "room-camera" || first.role !== "kiosk" || first.playing !== first.mid) throw new Error(`kiosk-1 is not on the stage: ${JSON.stringify(first)}`);

  result.stage = "kiosk_2_joins";
  const k2 = dial(env("KIOSK_TOKEN_2"), { extra: ["--heart-rate", "130", "--seed", "2"] });
  const t2 = await until(page, "kiosk_2_tile", tiles, (x) => x["kiosk-2/camera"]?.frames > 5, step * 2);
  const second = t2["kiosk-2/camera"];
  if (!second.element.startsWith("strip:") || second.role !== "kiosk" || second.playing !== second.mid || !t2._strip.includes("kiosk-2")) {
    throw new Error(`kiosk-2 did not get a tile of its own: ${JSON.stringify(t2)}`);
  }
  const mid = await stageUnchanged(page, "kiosk_1_unchanged_with_kiosk_2", first, t2["kiosk-1/camera"].frames);

  result.stage = "vitals_stay_kiosk_1";
  // Once kiosk-2's devices are heard from, three more pulse readings on the page: all kiosk-1's.
  await until(page, "kiosk_2_devices", () => [...window.cabine.state.channels.keys()], (k) => k.some((x) => x.startsWith("kiosk-2/")), step);
  const seq0 = await page.evaluate(() => window.cabine.state.vitals.pulse?.seq ?? 0);
  const pulses = new Set();
  await until(page, "pulse_readings", () => window.cabine.state.vitals.pulse, (p) => {
    if (p) pulses.add(Number(p.value));
    return p && p.seq >= seq0 + 3;
  }, step);
  result.checks.pulses = [...pulses];
  if ([...pulses].some((v) => v > 100)) throw new Error(`kiosk-2's pulse showed on the page: ${[...pulses]}`);

  result.stage = "kiosk_2_leaves";
  const updates = await page.evaluate(() => window.cabine.state.qualityUpdates || 0);
  k2.kill("SIGTERM");
  await until(page, "kiosk_2_tiles_gone", tiles,
    (x) => !Object.keys(x).some((k) => k.startsWith("kiosk-2/")) && !x._strip.includes("kiosk-2"), step);
  await stageUnchanged(page, "kiosk_1_unchanged_after_kiosk_2_left", first, mid.frames);

  result.stage = "rates";
  // Two seconds of quality updates after the removal (8 at 250 ms): none negative.
  const q = await until(page, "rates_after_removal", () => ({
    updates: window.cabine.state.qualityUpdates || 0, min: window.cabine.state.minKbps,
    shown: document.getElementById("quality").textContent,
  }), (x) => x.updates >= updates + 8, step);
  if (!(q.min >= 0) || /-\d/.test(q.shown)) throw new Error(`a negative rate: ${JSON.stringify(q)}`);

  result.stage = "favicon";
  const r = await fetch(`${base}/favicon.ico`);
  result.checks.favicon = { status: r.status, type: r.headers.get("content-type"), bytes: (await r.arrayBuffer()).byteLength };
  if (r.status !== 200 || !result.checks.favicon.bytes) throw new Error(`/favicon.ico: ${JSON.stringify(result.checks.favicon)}`);
}

async function pause(page) {
  result.stage = "kiosk";
  const k = dial(env("KIOSK_TOKEN_1"));
  const t = await until(page, "kiosk_tile", tiles, (x) => x["kiosk-1/camera"]?.frames > 5, step * 2);
  await until(page, "vitals", () => window.cabine.state.vitals, (v) => v.spo2 && v.pulse, step);
  await until(page, "frames_flow", tiles, (x) => x["kiosk-1/camera"].frames > t["kiosk-1/camera"].frames + 20, step);
  await until(page, "no_condition_before", () => window.cabine.state.notices, (n) => n.length === 0, step);

  result.stage = "stopped";
  const stopAt = Date.now();
  process.kill(k.pid, "SIGSTOP");
  log("kiosk stopped");
  const frozenEntry = () => window.cabine.state.noticeLog.filter((n) => n.key === "frozen:kiosk-1");
  const set = await until(page, "frozen_shown", frozenEntry, (l) => l.some((n) => n.set >= stopAt), 15000);
  const setAt = set.find((n) => n.set >= stopAt).set;
  result.checks.banner_text = await page.evaluate(() => document.getElementById("banner").textContent);
  // The rest of the 20 s pause (the scenario's length, not a synchronisation): every update of
  // the quality dot meanwhile is recorded by the page (a mutation observer), and the pause is
  // over once it has lasted 20 s and the dot was updated at least QUALITY_SAMPLES times.
  await page.evaluate(() => {
    const q = document.getElementById("quality");
    window.__dots = [q.className];
    new MutationObserver(() => window.__dots.push(q.className)).observe(q, { attributes: true, attributeFilter: ["class"] });
  });
  const seen = await until(page, "pause_observed", () => ({ now: Date.now(), dots: window.__dots }),
    (x) => x.now >= stopAt + 20000 && x.dots.length >= QUALITY_SAMPLES, 40000);
  const dots = new Set(seen.dots);
  result.checks.quality_while_frozen = [...dots];
  if ([...dots].some((c) => /good/.test(c))) throw new Error(`the quality dot was green while the video was frozen: ${[...dots]}`);

  result.stage = "continued";
  const contAt = Date.now();
  process.kill(k.pid, "SIGCONT");
  log("kiosk continued");
  const cleared = await until(page, "frozen_cleared", frozenEntry,
    (l) => l.some((n) => n.set >= stopAt && n.cleared !== null), 30000);
  const clearedAt = cleared.find((n) => n.set >= stopAt).cleared;
  // Cleared because the picture is back: the stage's tile decodes again (on the same m-line,
  // or on the new one if the kiosk published again), and the condition was said once.
  const back = await until(page, "video_back", tiles, (x) => x["kiosk-1/camera"]?.frames > 5 && x["kiosk-1/camera"].playing === x["kiosk-1/camera"].mid, step);
  await until(page, "video_rising", tiles, (x) => x["kiosk-1/camera"]?.frames > back["kiosk-1/camera"].frames + 5, step);
  const said = (await page.evaluate(frozenEntry)).filter((n) => n.set >= stopAt);
  if (said.length !== 1) throw new Error(`"video interrupted" was set ${said.length} times: ${JSON.stringify(said)}`);
  result.checks.stop_at = stopAt;
  result.checks.cont_at = contAt;
  result.checks.frozen_set_ms = setAt - stopAt;
  result.checks.frozen_cleared_ms = clearedAt - contAt;
  log(`frozen banner set ${setAt - stopAt} ms after STOP, cleared ${clearedAt - contAt} ms after CONT`);

  result.stage = "all_clear";
  // Media and vitals are back: then no condition is left standing (the devices one included).
  const seq = await page.evaluate(() => window.cabine.state.vitals.spo2.seq);
  await until(page, "vitals_back", () => window.cabine.state.vitals.spo2.seq, (s) => s !== seq, 30000);
  const vitalsBack = Date.now();
  const n = await until(page, "no_condition_after", () => ({ notices: window.cabine.state.notices, log: window.cabine.state.noticeLog }),
    (x) => x.notices.length === 0, 30000);
  result.checks.conditions_cleared_after_vitals_ms = Date.now() - vitalsBack;
  result.checks.notice_log = n.log;
}

async function reload(page) {
  const view = async () => {
    const r = await fetch(`${base}/api/rooms`, { headers: { authorization: `Bearer ${env("OPS_TOKEN")}` } });
    const v = await r.json();
    return (v.rooms || []).find((x) => x.room === room) || { sessions: [], signalling: [] };
  };
  const grace = Number(process.env.GRACE_MS || 30000);
  // First a reload (F5: the page keeps its link for the tab), then closing and reopening it.
  for (const how of ["reload", "reopen"]) {
    result.stage = `${how}_before`;
    await until(page, `${how}_first_live`, () => window.cabine.session.state, (s) => s === "live", step);
    // Its subscribe and publish (camera and microphone) sessions.
    let old = [];
    const deadline = Date.now() + step;
    while (old.length < 2 && Date.now() < deadline) {
      old = ((await view()).sessions || []).filter((s) => s.identity === "dr-1").map((s) => s.id);
      if (old.length < 2) await sleep(250);
    }
    if (old.length < 2) throw new Error(`the page's sessions never appeared in /api/rooms: ${JSON.stringify(old)}`);

    result.stage = how;
    if (how === "reload") await page.reload();
    else {
      await page.goto("about:blank");
      await openDoctor(page.context());
    }
    await until(page, `${how}_second_live`, () => window.cabine.session.state, (s) => s === "live", step);

    result.stage = `${how}_old_sessions_gone`;
    // The old page's media sessions and its signalling session (kept for the resume grace
    // period unless the new one supersedes it) are gone from the server.
    const t0 = Date.now();
    for (;;) {
      const v = await view();
      const ids = (v.sessions || []).map((s) => s.id);
      const mine = (v.signalling || []).filter((s) => s.identity === "dr-1");
      if (!old.some((id) => ids.includes(id)) && mine.length === 1) break;
      if (Date.now() - t0 > grace + step) throw new Error(`the old page's sessions were still there after ${grace + step} ms: ${JSON.stringify(v)}`);
      await sleep(250);
    }
    result.timings_ms[`${how}_old_sessions_gone`] = Date.now() - t0;
    // A "left" for the old session is sent just after it leaves the hub (its media sessions end
    // first) and would arrive within moments: the page's messages are watched for 3 s more.
    const watchUntil = Date.now() + 3000;
    let messages = [];
    while (Date.now() < watchUntil) {
      messages = await page.evaluate(() => window.cabine.state.messages);
      await sleep(250);
    }
    result.checks[`${how}_messages`] = messages;
    const bad = messages.filter((m) => /dr-1 (left|lost its connection)|You left|No token/.test(m));
    if (bad.length) throw new Error(`after the ${how}, the page said: ${JSON.stringify(bad)}`);
  }
}

async function main() {
  const consoleLines = [];
  let context, dir;
  try {
    result.stage = "launch";
    ({ context, dir } = await launchChromium("cabine-continuity-", { width: 1280, height: 860 }));
    await context.grantPermissions(["camera", "microphone"], { origin: new URL(base).origin }).catch(() => {});
    context.on("page", (p) => {
      p.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
      p.on("pageerror", (e) => consoleLines.push(`pageerror: ${e.message}`));
    });
    const page = await openDoctor(context);
    page.on("pageerror", (e) => consoleLines.push(`pageerror: ${e.message}`));
    const scenario = env("SCENARIO");
    if (scenario === "two_kiosks") await twoKiosks(page);
    else if (scenario === "pause") await pause(page);
    else if (scenario === "reload") await reload(page);
    else throw new Error(`unknown SCENARIO ${scenario}`);
    const errors = consoleLines.filter((l) => l.startsWith("pageerror"));
    if (errors.length) throw new Error(`the page threw: ${errors.join("; ")}`);
    result.stage = "done";
    finish(true, `${scenario}: all checks passed`);
    return 0;
  } catch (e) {
    result.console = consoleLines.slice(-40);
    result.kiosks = kiosks.map((k) => k.lines.slice(-10));
    finish(false, e.message || String(e));
    return 1;
  } finally {
    for (const k of kiosks) {
      try { process.kill(k.pid, "SIGCONT"); } catch { /* gone */ }
      try { k.kill("SIGTERM"); } catch { /* gone */ }
    }
    if (context) await context.close().catch(() => {});
    if (dir) rmSync(dir, { recursive: true, force: true });
  }
}

process.exit(await main().catch((e) => { finish(false, String(e)); return 1; }));
