// TURN relaying in Debian's chromium: the kiosk page and the doctor's page, both with
// `#relay=1` (iceTransportPolicy "relay"), create their peer connections with the ICE servers of
// the server's WebSocket `welcome` (TURN URLs and a credential minted per session) and must
// exchange media through the relay; each connection's selected candidate pair must be a
// relay candidate allocated over the protocol in RELAY_PROTOCOL (e.g. "tls": TURN over TLS).
// With HOLD_FILE, the pages then stay open until that file exists (the test reads the server's
// view meanwhile) or a step's timeout.
//
// Env: CABINE_URL, ROOM, DOCTOR_TOKEN, KIOSK_TOKEN, RELAY_PROTOCOL. Optional: HOLD_FILE, CHROMIUM,
// STEP_TIMEOUT_MS, CHROMIUM_ARGS (extra flags, space-separated).
// Prints one JSON line `{"ok":...}`; exit status 0 when ok.

import { existsSync, rmSync } from "node:fs";
import { driver, env, inbound, launchChromium, selectedPair } from "./harness.mjs";

const { result, finish, until } = driver("turn_relay", ["DOCTOR_TOKEN", "KIOSK_TOKEN"]);

async function main() {
  const base = env("CABINE_URL").replace(/\/+$/, "");
  const room = encodeURIComponent(env("ROOM"));
  const relayProtocol = env("RELAY_PROTOCOL");
  const step = Number(process.env.STEP_TIMEOUT_MS || 40000);
  const extra = (process.env.CHROMIUM_ARGS || "").split(" ").filter(Boolean);
  const consoleLines = [];
  let context;
  let dir;
  try {
    result.stage = "launch";
    ({ context, dir } = await launchChromium("cabine-turn-", { width: 1000, height: 700 }, extra));
    await context.grantPermissions(["camera", "microphone"], { origin: new URL(base).origin }).catch(() => {});
    const watch = (name, p) => {
      p.on("console", (m) => consoleLines.push(`${name} ${m.type()}: ${m.text()}`));
      p.on("pageerror", (e) => consoleLines.push(`${name} pageerror: ${e.message}`));
    };

    result.stage = "kiosk";
    const kiosk = context.pages()[0] || (await context.newPage());
    watch("kiosk", kiosk);
    await kiosk.goto(`${base}/kiosk/${room}#token=${encodeURIComponent(env("KIOSK_TOKEN"))}&relay=1`);
    result.checks.kiosk_ice_servers = await until(kiosk, "kiosk_ice_servers",
      () => (window.cabine.session.iceServers || []).map((s) => ({ urls: s.urls, credential: !!s.credential })),
      (s) => s.some((x) => x.credential), step);

    result.stage = "doctor";
    const doctor = await context.newPage();
    watch("doctor", doctor);
    await doctor.goto(`${base}/consult/${room}#token=${encodeURIComponent(env("DOCTOR_TOKEN"))}&relay=1`);
    await until(doctor, "doctor_receives", inbound,
      (s) => Object.values(s).some((x) => x.kind === "video" && x.frames > 10), step);

    result.stage = "relayed";
    const isRelay = (c) => c && c.type === "relay" && c.relayProtocol === relayProtocol;
    // A string expression: playwright evaluates it as is (the pages' CSP forbids eval).
    await until(doctor, "doctor_subscribe_pair", `(${selectedPair})("sub")`, isRelay, step);
    await until(kiosk, "kiosk_publish_pair", `(${selectedPair})("pub")`, isRelay, step);

    const hold = process.env.HOLD_FILE;
    if (hold) {
      result.stage = "hold";
      const deadline = Date.now() + step;
      while (!existsSync(hold) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    }

    result.stage = "done";
    finish(true, `kiosk page and doctor's page exchanged media through TURN over ${relayProtocol}`);
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
