// ICE-TCP in Debian's chromium: the kiosk page and the doctor's page, in a network whose UDP to
// the server is dropped, must exchange media with the server over its passive TCP candidate
// (RFC 6544): video frames are decoded on the doctor's page and each page's selected candidate
// pair is a TCP one. Once that holds, the driver keeps the pages open until the file HOLD_FILE
// exists (the test writes it once it has seen what the server reports) or STEP_TIMEOUT_MS.
// A second doctor's page, in DIAL_ROOM where `cabine-kiosk dial` publishes from the same
// network, must show the kiosk's vitals (SpO2 and pulse tiles, on the data channel over the
// TCP path) within STEP_TIMEOUT_MS.
//
// Env: CABINE_URL, ROOM, DOCTOR_TOKEN, KIOSK_TOKEN, HOLD_FILE, DIAL_ROOM, DIAL_DOCTOR_TOKEN. Optional: CHROMIUM,
// STEP_TIMEOUT_MS, CHROMIUM_ARGS (extra flags, space-separated).
// Prints one JSON line `{"ok":...}`; exit status 0 when ok.

import { existsSync, rmSync } from "node:fs";
import { driver, env, inbound, launchChromium, selectedPair } from "./harness.mjs";

const { result, finish, until } = driver("ice_tcp", ["DOCTOR_TOKEN", "KIOSK_TOKEN", "DIAL_DOCTOR_TOKEN"]);

async function main() {
  const base = env("CABINE_URL").replace(/\/+$/, "");
  const room = encodeURIComponent(env("ROOM"));
  const hold = env("HOLD_FILE");
  const step = Number(process.env.STEP_TIMEOUT_MS || 40000);
  const extra = (process.env.CHROMIUM_ARGS || "").split(" ").filter(Boolean);
  const consoleLines = [];
  let context;
  let dir;
  try {
    result.stage = "launch";
    ({ context, dir } = await launchChromium("cabine-icetcp-", { width: 1000, height: 700 }, extra));
    await context.grantPermissions(["camera", "microphone"], { origin: new URL(base).origin }).catch(() => {});
    const watch = (name, p) => {
      p.on("console", (m) => consoleLines.push(`${name} ${m.type()}: ${m.text()}`));
      p.on("pageerror", (e) => consoleLines.push(`${name} pageerror: ${e.message}`));
    };

    result.stage = "kiosk";
    const kiosk = context.pages()[0] || (await context.newPage());
    watch("kiosk", kiosk);
    await kiosk.goto(`${base}/kiosk/${room}#token=${encodeURIComponent(env("KIOSK_TOKEN"))}`);

    result.stage = "doctor";
    const doctor = await context.newPage();
    watch("doctor", doctor);
    await doctor.goto(`${base}/consult/${room}#token=${encodeURIComponent(env("DOCTOR_TOKEN"))}`);
    await until(doctor, "doctor_receives", inbound,
      (s) => Object.values(s).some((x) => x.kind === "video" && x.frames > 10), step);

    result.stage = "tcp";
    const isTcp = (c) => c && c.protocol === "tcp" && c.remote === "tcp";
    // A string expression: playwright evaluates it as is (the pages' CSP forbids eval).
    await until(doctor, "doctor_subscribe_pair", `(${selectedPair})("sub")`, isTcp, step);
    await until(kiosk, "kiosk_publish_pair", `(${selectedPair})("pub")`, isTcp, step);

    result.stage = "dial_vitals";
    const vitalsPage = await context.newPage();
    watch("dial-doctor", vitalsPage);
    const dialRoom = encodeURIComponent(env("DIAL_ROOM"));
    await vitalsPage.goto(`${base}/consult/${dialRoom}#token=${encodeURIComponent(env("DIAL_DOCTOR_TOKEN"))}`);
    await until(vitalsPage, "dial_vitals", () => window.cabine.state.vitals, (v) => v.spo2 && v.pulse, step);
    const tiles = await vitalsPage.evaluate(() => Object.fromEntries(["spo2", "pulse"].map((id) => {
      const el = document.getElementById("tile-" + id);
      return [id, { value: el.querySelector(".value").textContent, time: el.querySelector(".time").textContent }];
    })));
    result.checks.dial_tiles = tiles;
    const spo2 = Number(tiles.spo2.value), pulse = Number(tiles.pulse.value);
    if (!(spo2 >= 85 && spo2 <= 100)) throw new Error(`SpO2 tile shows ${tiles.spo2.value}`);
    if (!(pulse >= 40 && pulse <= 160)) throw new Error(`pulse tile shows ${tiles.pulse.value}`);
    await until(vitalsPage, "dial_doctor_pair", `(${selectedPair})("sub")`, isTcp, step);

    result.stage = "hold";
    const deadline = Date.now() + step;
    while (!existsSync(hold) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));

    result.stage = "done";
    finish(true, "kiosk page and doctor's page exchanged media over ICE-TCP");
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
