// The kiosk page and the doctor's page together in Debian's chromium (fake devices), over the
// WebSocket signalling only: the kiosk page publishes its camera, microphone and an unprocessed
// stethoscope; the doctor's page plays them; the kiosk page switches its device camera on
// (a re-offer on its publish connection) and the doctor's page shows it without a reload;
// the kiosk page plays the doctor's camera in its "Doctor" pane (a track whose publisher has the
// doctor role) and publishes under its own identity as msid stream.
//
// Env: CABINE_URL, ROOM, DOCTOR_TOKEN, KIOSK_TOKEN. Optional: CHROMIUM, STEP_TIMEOUT_MS.
// Prints one JSON line `{"ok":...}`; exit status 0 when ok.

import { rmSync } from "node:fs";
import { driver, env, inbound, launchChromium, sleep } from "./harness.mjs";

const { result, finish, until } = driver("kiosk_page", ["DOCTOR_TOKEN", "KIOSK_TOKEN"]);

async function main() {
  const base = env("CABINE_URL").replace(/\/+$/, "");
  const room = encodeURIComponent(env("ROOM"));
  const step = Number(process.env.STEP_TIMEOUT_MS || 30000);
  const consoleLines = [];
  let context;
  let dir;
  try {
    result.stage = "launch";
    ({ context, dir } = await launchChromium("cabine-kiosk-page-", { width: 1100, height: 800 }));
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
    // The kiosk page publishes under its own identity (msid stream), and its "Doctor" pane
    // plays a track the server says a doctor publishes.
    result.checks.kiosk_streams = await doctor.evaluate(() => [...window.cabine.session.tracks.values()]
      .filter((t) => t.from === "kiosk-1").map((t) => `${t.stream} ${t.label} ${t.role}`));
    if (!result.checks.kiosk_streams.length || !result.checks.kiosk_streams.every((x) => x.startsWith("kiosk-1 ") && x.endsWith(" kiosk"))) {
      throw new Error(`the kiosk page's tracks: ${JSON.stringify(result.checks.kiosk_streams)}`);
    }
    result.checks.doctor_pane = await until(kiosk, "doctor_pane", () => {
      const shown = document.getElementById("doctor").srcObject?.getVideoTracks()[0];
      const s = window.cabine.session;
      const rx = s.sub ? s.sub.getTransceivers().find((x) => shown && x.receiver.track === shown) : null;
      const info = rx ? s.tracks.get(rx.mid) : null;
      return info ? { from: info.from, role: info.role, label: info.label } : null;
    }, (d) => d && d.from === "dr-1" && d.role === "doctor", step);

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
    if (dir) rmSync(dir, { recursive: true, force: true });
  }
}

process.exit(await main().catch((e) => { finish(false, String(e)); return 1; }));
