// The kiosk page's devices in Debian's chromium with fake devices (three cameras; audio inputs
// "default", "Fake Audio Input 1" and "2"): with `stethoscope=1` the stethoscope is never the
// microphone's device; mid-consultation the cabin switches its room camera and stethoscope
// (replaceTrack: the publish connection keeps its m-lines, the doctor keeps receiving); a
// stethoscope on the microphone's device is refused; after a reload the cabin's choices are
// used again.
//
// Env: CABINE_URL, ROOM, KIOSK_TOKEN, DOCTOR_TOKEN. Optional: CHROMIUM, STEP_TIMEOUT_MS
// (default 30000). Prints one JSON line `{"ok":...}`; exit status 0 when ok.

import { rmSync } from "node:fs";
import { driver, env, inbound, launchChromium } from "./harness.mjs";

const { result, finish, until } = driver("kiosk_devices", ["KIOSK_TOKEN", "DOCTOR_TOKEN"]);

// Run in the kiosk page: the devices in use, the publish connection's senders and refusals.
const kioskDevices = () => ({
  devices: { ...window.cabine.state.devices },
  refused: window.cabine.state.refused.length,
  senders: window.cabine.session.pub ? window.cabine.session.pub.getTransceivers().length : 0,
  published: window.cabine.state.published,
  steth_select: document.getElementById("steth").value,
});

async function main() {
  const base = env("CABINE_URL").replace(/\/+$/, "");
  const room = encodeURIComponent(env("ROOM"));
  const step = Number(process.env.STEP_TIMEOUT_MS || 30000);
  const consoleLines = [];
  let context;
  let dir;
  try {
    result.stage = "launch";
    ({ context, dir } = await launchChromium("cabine-kiosk-devices-", { width: 1000, height: 700 },
      ["--use-fake-device-for-media-stream=device-count=3"]));
    await context.grantPermissions(["camera", "microphone"], { origin: new URL(base).origin }).catch(() => {});
    const watch = (what, page) => {
      page.on("console", (m) => consoleLines.push(`${what} ${m.type()}: ${m.text()}`));
      page.on("pageerror", (e) => consoleLines.push(`${what} pageerror: ${e.message}`));
    };

    result.stage = "kiosk";
    const kiosk = await context.newPage();
    watch("kiosk", kiosk);
    await kiosk.goto(`${base}/kiosk/${room}#token=${encodeURIComponent(env("KIOSK_TOKEN"))}&stethoscope=1`);
    const first = await until(kiosk, "kiosk_published", kioskDevices,
      (k) => ["room-camera", "microphone", "stethoscope"].every((l) => k.published.includes(l)), step);
    if (!first.devices.stethoscope || first.devices.stethoscope === first.devices.microphone) {
      throw new Error(`the stethoscope is the microphone's device: ${JSON.stringify(first.devices)}`);
    }
    const options = await kiosk.evaluate(() => ({
      cams: [...document.getElementById("room-cam").options].map((o) => o.value).filter(Boolean),
      mics: [...document.getElementById("steth").options].map((o) => o.value).filter(Boolean),
    }));
    result.checks.options = { cams: options.cams.length, mics: options.mics.length };
    if (options.cams.length < 2 || options.mics.length < 3) throw new Error(`fake devices missing: ${JSON.stringify(options)}`);

    result.stage = "doctor";
    const doctor = await context.newPage();
    watch("doctor", doctor);
    await doctor.goto(`${base}/consult/${room}#token=${encodeURIComponent(env("DOCTOR_TOKEN"))}`);
    const d0 = await until(doctor, "doctor_receives", inbound,
      (s) => (s["room-camera"]?.frames || 0) > 10 && (s["stethoscope"]?.packets || 0) > 50, step);
    const renegotiations = await doctor.evaluate(() => window.cabine.state.renegotiations);

    result.stage = "switch_room_camera";
    // The last fake camera (chromium's fake_device_1 is a 16-bit depth camera, which the
    // encoder never sends).
    const cam = options.cams[options.cams.length - 1];
    if (cam === first.devices.roomCamera) throw new Error("the room camera is already the last one");
    await kiosk.selectOption("#room-cam", cam);
    await until(kiosk, "room_camera_switched", kioskDevices, (k) => k.devices.roomCamera === cam, step);
    await until(doctor, "frames_after_camera_switch", inbound,
      (s) => (s["room-camera"]?.frames || 0) > d0["room-camera"].frames + 30, step);

    result.stage = "refuse";
    await kiosk.selectOption("#steth", first.devices.microphone);
    const refused = await until(kiosk, "stethoscope_refused", kioskDevices, (k) => k.refused > first.refused, step);
    if (refused.devices.stethoscope !== first.devices.stethoscope || refused.steth_select !== first.devices.stethoscope) {
      throw new Error(`a refused stethoscope changed the stethoscope: ${JSON.stringify(refused)}`);
    }

    result.stage = "switch_stethoscope";
    const steth = options.mics.find((id) => id !== first.devices.microphone && id !== first.devices.stethoscope && id !== "default");
    await kiosk.selectOption("#steth", steth);
    const switched = await until(kiosk, "stethoscope_switched", kioskDevices, (k) => k.devices.stethoscope === steth, step);
    if (switched.senders !== first.senders && first.senders) throw new Error(`the switch added m-lines: ${JSON.stringify(switched)}`);
    const d1 = await doctor.evaluate(inbound);
    await until(doctor, "stethoscope_after_switch", inbound,
      (s) => (s["stethoscope"]?.packets || 0) > d1["stethoscope"].packets + 50, step);
    // replaceTrack: no renegotiation reached the doctor.
    result.checks.doctor_renegotiations = { before: renegotiations, after: await doctor.evaluate(() => window.cabine.state.renegotiations) };
    if (result.checks.doctor_renegotiations.after !== renegotiations) throw new Error(`the switches renegotiated the doctor: ${JSON.stringify(result.checks.doctor_renegotiations)}`);

    result.stage = "remembered";
    result.checks.chosen = { room_camera: cam, stethoscope: steth,
      stored: await kiosk.evaluate(() => ({ ...localStorage })) };
    await kiosk.reload();
    await until(kiosk, "remembered_after_reload", kioskDevices,
      (k) => k.published.includes("stethoscope") && k.devices.roomCamera === cam && k.devices.stethoscope === steth, step);

    result.stage = "done";
    finish(true, "devices chosen, switched with replaceTrack, refused on the microphone's device, remembered");
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
