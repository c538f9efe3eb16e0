// The kiosk page and the doctor's page together in Debian's chromium (fake devices), over the
// WebSocket signalling only: the kiosk page publishes its camera, microphone and an unprocessed
// stethoscope; the doctor's page plays them; the kiosk page switches its device camera on
// (a re-offer on its publish connection) and the doctor's page shows it without a reload;
// the kiosk page plays the doctor's camera.
//
// Env: CABINE_URL, ROOM, DOCTOR_TOKEN, KIOSK_TOKEN. Optional: CHROMIUM, STEP_TIMEOUT_MS.
// Prints one JSON line `{"ok":...}`; exit status 0 when ok.

import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const t0 = Date.now();
const log = (m) => process.stderr.write(`[kiosk_page +${((Date.now() - t0) / 1000).toFixed(1)}s] ${m}\n`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const result = { ok: false, stage: "setup", checks: {} };

function redact(text) {
  let out = text;
  for (const n of ["DOCTOR_TOKEN", "KIOSK_TOKEN"]) {
    const t = process.env[n];
    if (t) out = out.split(t).join(`<${n}>`).split(encodeURIComponent(t)).join(`<${n}>`);
  }
  return out;
}
function finish(ok, message) {
  result.ok = ok;
  result.message = redact(message);
  result.total_ms = Date.now() - t0;
  process.stdout.write(redact(JSON.stringify(result)) + "\n");
  process.stderr.write(`kiosk_page ${ok ? "ok" : `FAILED at ${result.stage}`}: ${result.message}\n`);
}
function env(name) {
  const v = process.env[name];
  if (!v) throw new Error(`environment variable ${name} is required`);
  return v;
}
async function until(page, what, probe, ok, ms) {
  const deadline = Date.now() + ms;
  let v;
  for (;;) {
    v = await page.evaluate(probe);
    if (ok(v)) {
      result.checks[what] = v;
      log(`${what}: ${JSON.stringify(v)}`);
      return v;
    }
    if (Date.now() > deadline) throw new Error(`${what}: not reached after ${ms} ms; last ${JSON.stringify(v)}`);
    await sleep(250);
  }
}
// Inbound statistics of a page's subscribe connection, by track label.
const inbound = async () => {
  const s = window.cabine.session;
  const out = {};
  if (!s.sub) return out;
  (await s.sub.getStats()).forEach((r) => {
    if (r.type !== "inbound-rtp") return;
    const info = s.tracks.get(r.mid);
    const label = info ? info.label : `mid-${r.mid}`;
    const o = out[label] || { kind: r.kind, packets: 0, frames: 0 };
    o.packets += r.packetsReceived || 0;
    o.frames += r.framesDecoded || 0;
    out[label] = o;
  });
  return out;
};

async function main() {
  const base = env("CABINE_URL").replace(/\/+$/, "");
  const room = encodeURIComponent(env("ROOM"));
  const chromium = process.env.CHROMIUM || "/usr/bin/chromium";
  const step = Number(process.env.STEP_TIMEOUT_MS || 30000);
  if (!existsSync(chromium)) throw new Error(`${chromium} not found (apt-get install chromium, or run .ci/run)`);
  const playwright = await import("playwright-core");
  const dir = mkdtempSync(join(tmpdir(), "cabine-kiosk-page-"));
  const consoleLines = [];
  let context;
  try {
    result.stage = "launch";
    context = await playwright.chromium.launchPersistentContext(dir, {
      executablePath: chromium,
      headless: true,
      args: [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        "--autoplay-policy=no-user-gesture-required",
      ],
      viewport: { width: 1100, height: 800 },
    });
    await context.grantPermissions(["camera", "microphone"], { origin: new URL(base).origin }).catch(() => {});
    const watch = (name, p) => {
      p.on("console", (m) => consoleLines.push(`${name} ${m.type()}: ${m.text()}`));
      p.on("pageerror", (e) => consoleLines.push(`${name} pageerror: ${e.message}`));
    };

    result.stage = "kiosk";
    const kiosk = context.pages()[0] || (await context.newPage());
    watch("kiosk", kiosk);
    await kiosk.goto(`${base}/kiosk/${room}#token=${encodeURIComponent(env("KIOSK_TOKEN"))}&stethoscope=1`);
    await until(kiosk, "kiosk_published", () => window.cabine.state.published,
      (p) => ["room-camera", "microphone", "stethoscope"].every((l) => p.includes(l)), step);

    result.stage = "doctor";
    const doctor = await context.newPage();
    watch("doctor", doctor);
    await doctor.goto(`${base}/consult/${room}#token=${encodeURIComponent(env("DOCTOR_TOKEN"))}`);
    const pageId = await doctor.evaluate(() => window.cabine.state.pageId);
    await until(doctor, "doctor_receives", inbound,
      (s) => (s["room-camera"]?.frames || 0) > 10 && (s["stethoscope"]?.packets || 0) > 50, step);
    result.checks.stethoscope_class = await doctor.evaluate(() => window.cabine.state.stethoscope);
    if (!result.checks.stethoscope_class) throw new Error("the doctor's page did not recognise the stethoscope");

    result.stage = "device_camera";
    await kiosk.evaluate(() => window.cabine.switchDevice());
    await until(kiosk, "kiosk_republished", () => window.cabine.state.published,
      (p) => p.includes("device-camera"), step);
    await until(doctor, "doctor_device_camera", inbound, (s) => (s["device-camera"]?.frames || 0) > 10, step);
    await until(doctor, "device_view", () => !document.getElementById("device").classList.contains("hidden"), (x) => x, step);
    if ((await doctor.evaluate(() => window.cabine.state.pageId)) !== pageId) throw new Error("the doctor's page reloaded");

    result.stage = "doctor_video_at_kiosk";
    await until(kiosk, "kiosk_sees_doctor", inbound,
      (s) => Object.values(s).some((x) => x.kind === "video" && x.frames > 10), step);

    result.stage = "leave";
    await doctor.click("#leave");
    await kiosk.click("#leave");
    await sleep(300);
    result.stage = "done";
    finish(true, "kiosk page and doctor's page exchanged media; device camera added without reload");
    return 0;
  } catch (e) {
    result.console = consoleLines.slice(-40);
    finish(false, e.message || String(e));
    return 1;
  } finally {
    if (context) await context.close().catch(() => {});
    rmSync(dir, { recursive: true, force: true });
  }
}

process.exit(await main().catch((e) => { finish(false, String(e)); return 1; }));
