// The doctor's page in Debian's chromium (fake camera and microphone) against a real server and
// a simulated cabin (cabine-kiosk as a library: room camera, microphone, stethoscope, devices
// over QUIC). Checks, in order: the kiosk's video plays (frames decoded increasing) and the
// stethoscope track arrives and its beats are visible on the trace; vitals tiles show SpO2,
// pulse and temperature; the ECG canvas is drawn and the ECG and pleth read in bpm; a device
// camera published mid-consultation appears without a reload; "Measure BP" yields a new reading;
// the WebSocket is cut and the page resumes with media flowing again; a screenshot is saved.
//
// Env: CABINE_URL, ROOM, DOCTOR_TOKEN. Optional: CHROMIUM, SCREENSHOT
// (default <workspace>/target/screenshots/consult.png), STEP_TIMEOUT_MS (default 30000).
// Prints one JSON line `{"ok":...}`; exit status 0 when ok.

import { mkdirSync, rmSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { driver, env, inbound, launchChromium } from "./harness.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const { result, finish, until } = driver("consult", ["DOCTOR_TOKEN"]);

async function main() {
  const base = env("CABINE_URL").replace(/\/+$/, "");
  const room = env("ROOM");
  const token = env("DOCTOR_TOKEN");
  const step = Number(process.env.STEP_TIMEOUT_MS || 30000);
  const screenshot = process.env.SCREENSHOT || resolve(here, "../../target/screenshots/consult.png");
  const consoleLines = [];
  let context;
  let userDataDir;
  try {
    result.stage = "launch";
    ({ context, dir: userDataDir } = await launchChromium("cabine-consult-", { width: 1280, height: 860 }));
    await context.grantPermissions(["camera", "microphone"], { origin: new URL(base).origin }).catch(() => {});
    const page = context.pages()[0] || (await context.newPage());
    page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
    page.on("pageerror", (e) => consoleLines.push(`pageerror: ${e.message}`));

    result.stage = "open";
    await page.goto(`${base}/consult/${encodeURIComponent(room)}#token=${encodeURIComponent(token)}`);
    const pageId = await page.evaluate(() => window.cabine.state.pageId);
    result.checks.token_left_address_bar = await page.evaluate(() => !location.href.includes("token"));
    if (!result.checks.token_left_address_bar) throw new Error("the token is still in the address bar");

    result.stage = "video";
    const v1 = await until(page, "room_camera_frames", inbound, (s) => (s["room-camera"]?.frames || 0) > 5, step);
    await until(page, "room_camera_frames_increase", inbound,
      (s) => (s["room-camera"]?.frames || 0) > v1["room-camera"].frames + 5, step);
    await until(page, "room_camera_playing", () => {
      const v = document.getElementById("room-camera");
      return { width: v.videoWidth, time: v.currentTime, paused: v.paused };
    }, (v) => v.width > 0 && v.time > 0, step);

    result.stage = "stethoscope";
    await until(page, "stethoscope_received", async () => ({
      flag: window.cabine.state.stethoscope,
      listen_enabled: !document.getElementById("listen").disabled,
      drawn: window.cabine.state.stethFrames,
    }), (s) => s.flag && s.listen_enabled && s.drawn > 5, step);
    await until(page, "stethoscope_packets", inbound, (s) => (s["stethoscope"]?.packets || 0) > 50, step);
    // The heart sounds are visible on the trace (automatic gain): columns of the scrolling
    // phonocardiogram that span more than a fifth of its height.
    await until(page, "stethoscope_visible", () => {
      const c = document.getElementById("steth-wave");
      const px = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
      let tall = 0;
      for (let x = 0; x < c.width; x++) {
        let lit = 0;
        for (let y = 0; y < c.height; y++) if (px[(y * c.width + x) * 4 + 1] > 150) lit++;
        if (lit > c.height / 5) tall++;
      }
      return { tall, width: c.width, scale: window.cabine.state.stethScale };
    }, (v) => v.tall > v.width / 50, step);
    // Listening turns the gain up; the control responds.
    await page.click("#listen");
    result.checks.listening = await page.evaluate(() => document.getElementById("listen").classList.contains("on"));

    result.stage = "vitals";
    await until(page, "vitals", () => window.cabine.state.vitals,
      (v) => v.spo2 && v.pulse && v.temp, step);
    const tiles = await page.evaluate(() => Object.fromEntries(["spo2", "pulse", "temp"].map((id) => {
      const el = document.getElementById("tile-" + id);
      return [id, { value: el.querySelector(".value").textContent, unit: el.querySelector(".unit").textContent, time: el.querySelector(".time").textContent }];
    })));
    result.checks.tiles = tiles;
    const spo2 = Number(tiles.spo2.value), pulse = Number(tiles.pulse.value), temp = Number(tiles.temp.value);
    if (!(spo2 >= 85 && spo2 <= 100)) throw new Error(`SpO2 tile shows ${tiles.spo2.value}`);
    if (!(pulse >= 40 && pulse <= 160)) throw new Error(`pulse tile shows ${tiles.pulse.value}`);
    if (!(temp >= 35 && temp <= 41)) throw new Error(`temperature tile shows ${tiles.temp.value}`);
    if (!tiles.spo2.time || !tiles.temp.time) throw new Error("tiles lack the measurement time");

    result.stage = "ecg";
    await until(page, "ecg_drawn", () => ({ draws: window.cabine.state.ecgDraws, samples: window.cabine.state.waveSamples }),
      (e) => e.draws > 10 && e.samples.ecg > 500, step);
    // Over the traces, heart rates in bpm (the cabin's patient: 72/min): the ECG's counted from
    // its trace (the simulated ECG sends no rate), the pleth's from the oximeter's pulse.
    result.checks.rates = await until(page, "trace_rates", () => ({
      ...window.cabine.state.rates,
      ecg_text: document.getElementById("ecg-rate").textContent,
      pleth_text: document.getElementById("pleth-rate").textContent,
    }), (r) => r.ecg && r.pleth && r.ecg.source === "trace" && r.pleth.source === "device"
      && r.ecg.bpm >= 60 && r.ecg.bpm <= 85 && r.pleth.bpm >= 60 && r.pleth.bpm <= 85
      && /bpm/.test(r.ecg_text) && !/Hz/.test(r.ecg_text + r.pleth_text), step);
    // The consultation timer runs from the cabin's first media.
    await until(page, "consultation_timer", () => document.getElementById("timer").textContent,
      (t) => /^(\d+:)?\d{2}:\d{2}$/.test(t) && t !== "00:00", step);

    result.stage = "device_camera";
    await until(page, "device_camera", async () => {
      const v = document.getElementById("device-camera");
      return {
        visible: !document.getElementById("device").classList.contains("hidden"),
        width: v.videoWidth,
        renegotiations: window.cabine.state.renegotiations,
        pageId: window.cabine.state.pageId,
      };
    }, (d) => d.visible && d.width > 0 && d.renegotiations >= 2, step * 2);
    if ((await page.evaluate(() => window.cabine.state.pageId)) !== pageId) throw new Error("the page reloaded");
    await until(page, "device_camera_frames", inbound, (s) => (s["device-camera"]?.frames || 0) > 5, step);
    await page.click("#enlarge");
    // The kiosk answers take_snapshot with a full-resolution JPEG over the telemetry blob channel.
    result.stage = "snapshot";
    await until(page, "stills_channel", () => [...window.cabine.state.channels.values()]
      .some((c) => (c.commands || []).includes("take_snapshot")), (x) => x, step);
    await page.click("#snapshot");
    result.checks.snapshot = await until(page, "snapshot_still",
      () => ({ still: window.cabine.state.snapshot, stills: window.cabine.state.stills,
               caption: document.getElementById("still-caption").textContent }),
      (s) => s.still && s.still.what === "full resolution still" && s.still.width >= 1280 && s.stills.length > 0,
      step);

    result.stage = "measure_bp";
    await until(page, "bp_button", () => !document.getElementById("measure-bp").disabled, (x) => x, step);
    const bpBefore = await page.evaluate(() => window.cabine.state.bpReadings);
    await page.click("#measure-bp");
    await until(page, "bp_reading", () => ({ n: window.cabine.state.bpReadings, bp: window.cabine.state.vitals.bp }),
      (b) => b.n > bpBefore && b.bp && /^\d+\/\d+$/.test(b.bp.value), step);

    result.stage = "resume";
    const before = await page.evaluate(inbound);
    await page.evaluate(() => window.cabine.session.ws.close()); // the Wi-Fi blips
    // The doctor is told (the banner may already have moved on when the resume is quick).
    await until(page, "reconnecting_message", () => window.cabine.state.messages.slice(-6),
      (m) => m.some((t) => /reconnecting/i.test(t)), 5000);
    const cut = Date.now();
    await until(page, "resumed", () => ({ resumes: window.cabine.state.resumes, state: window.cabine.session.state }),
      (r) => r.resumes >= 1 && r.state === "live", 10000);
    result.timings_ms.resume_after_cut = Date.now() - cut;
    const videoFrames = (s) => Object.values(s).filter((x) => x.kind === "video").reduce((n, x) => n + x.frames, 0);
    await until(page, "media_after_resume", inbound, (s) => videoFrames(s) > videoFrames(before) + 10, step);

    result.stage = "screenshot";
    await page.click("#enlarge"); // back to the room camera large
    // Shot once the large tile has presented frames since the click.
    const shown = await page.evaluate(inbound);
    await until(page, "enlarged_frames", inbound,
      (s) => (s["room-camera"]?.frames || 0) > (shown["room-camera"]?.frames || 0) + 15, step);
    mkdirSync(dirname(screenshot), { recursive: true });
    await page.screenshot({ path: screenshot });
    result.screenshot = screenshot;

    result.stage = "leave";
    await page.click("#leave");
    await until(page, "left", () => window.cabine.session.state, (s) => s === "left", step);
    result.stage = "done";
    finish(true, `all checks passed; resumed ${result.timings_ms.resume_after_cut} ms after the cut`);
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
