// The walk-in queue in Debian's chromium (fake devices): two kiosk pages in queue mode
// (/kiosk) see positions 1 and 2; the doctor's queue page (/queue) lists both and takes the
// first; the doctor's page and the first kiosk page land in the same room and exchange media,
// the doctor's page shows the cabin's vitals (its devices' link is started by the Rust side
// once the room exists); the second kiosk moves to position 1, then cancels.
//
// Env: CABINE_URL, KIOSK1_TOKEN, KIOSK2_TOKEN, DOCTOR_TOKEN (for "*", granted take).
// Optional: CHROMIUM, STEP_TIMEOUT_MS. Prints one JSON line `{"ok":...}`; exit 0 when ok.

import { rmSync } from "node:fs";
import { driver, env, inbound, launchChromium, sleep } from "./harness.mjs";

const { result, log, finish, until } = driver("queue_pages", ["KIOSK1_TOKEN", "KIOSK2_TOKEN", "DOCTOR_TOKEN"]);

async function main() {
  const base = env("CABINE_URL").replace(/\/+$/, "");
  const step = Number(process.env.STEP_TIMEOUT_MS || 30000);
  const consoleLines = [];
  let context;
  let dir;
  try {
    result.stage = "launch";
    ({ context, dir } = await launchChromium("cabine-queue-pages-", { width: 1100, height: 800 }));
    await context.grantPermissions(["camera", "microphone"], { origin: new URL(base).origin }).catch(() => {});
    const watch = (name, p) => {
      p.on("console", (m) => consoleLines.push(`${name} ${m.type()}: ${m.text()}`));
      p.on("pageerror", (e) => consoleLines.push(`${name} pageerror: ${e.message}`));
    };
    const wait = () => () => ({ state: window.cabine.state.state, position: window.cabine.state.position, estimate: window.cabine.state.estimatedWaitS, shown: document.getElementById("position").textContent, follow: window.cabine.state.follow });

    result.stage = "kiosk1_queues";
    const kiosk1 = context.pages()[0] || (await context.newPage());
    watch("kiosk1", kiosk1);
    await kiosk1.goto(`${base}/kiosk#token=${encodeURIComponent(env("KIOSK1_TOKEN"))}&reason=${encodeURIComponent("fever, cough")}`);
    await until(kiosk1, "kiosk1_position", wait(), (s) => s.state === "waiting" && s.position === 1 && s.shown === "1" && s.estimate > 0, step);

    result.stage = "kiosk2_queues";
    const kiosk2 = await context.newPage();
    watch("kiosk2", kiosk2);
    await kiosk2.goto(`${base}/kiosk#token=${encodeURIComponent(env("KIOSK2_TOKEN"))}&reason=rash`);
    await until(kiosk2, "kiosk2_position", wait(), (s) => s.state === "waiting" && s.position === 2 && s.shown === "2", step);

    result.stage = "doctor_lists";
    const doctor = await context.newPage();
    watch("doctor", doctor);
    await doctor.goto(`${base}/queue#token=${encodeURIComponent(env("DOCTOR_TOKEN"))}`);
    const listed = await until(doctor, "doctor_lists", () => [...document.querySelectorAll("#tickets tbody tr")].map((tr) => tr.textContent),
      (rows) => rows.length === 2, step);
    if (!listed[0].includes("fever, cough") || !listed[1].includes("rash")) throw new Error(`queue order: ${JSON.stringify(listed)}`);

    result.stage = "take";
    await doctor.click("#tickets tbody tr:first-child button.take");
    await doctor.waitForURL(/\/consult\/q-/, { timeout: step });
    const doctorRoom = new URL(doctor.url()).pathname.split("/").pop();
    await kiosk1.waitForURL(/\/kiosk\/q-/, { timeout: step });
    const kioskRoom = new URL(kiosk1.url()).pathname.split("/").pop();
    result.checks.same_room = doctorRoom === kioskRoom;
    log(`doctor in ${doctorRoom}, kiosk in ${kioskRoom}`);
    if (doctorRoom !== kioskRoom) throw new Error(`the doctor (${doctorRoom}) and the kiosk (${kioskRoom}) are in different rooms`);
    if (kiosk1.url().includes("token=") || doctor.url().includes("token=")) throw new Error("a token stayed in the address bar");

    result.stage = "media";
    await kiosk1.waitForFunction(() => window.cabine && window.cabine.state && Array.isArray(window.cabine.state.published), null, { timeout: step });
    await until(kiosk1, "kiosk_published", () => window.cabine.state.published,
      (p) => ["room-camera", "microphone"].every((l) => p.includes(l)), step);
    await doctor.waitForFunction(() => window.cabine && window.cabine.session, null, { timeout: step });
    await until(doctor, "doctor_receives", inbound, (s) => (s["room-camera"]?.frames || 0) > 10, step);
    await until(kiosk1, "kiosk_sees_doctor", inbound,
      (s) => Object.values(s).some((x) => x.kind === "video" && x.frames > 10), step);

    result.stage = "vitals";
    await until(doctor, "vitals", () => window.cabine.state.vitals,
      (v) => v.spo2 && v.pulse, step * 2);

    result.stage = "kiosk2_moves_up";
    await until(kiosk2, "kiosk2_position_after", wait(), (s) => s.state === "waiting" && s.position === 1 && s.shown === "1", step);

    result.stage = "kiosk2_cancels";
    await kiosk2.click("#cancel");
    await until(kiosk2, "kiosk2_cancelled", wait(), (s) => s.state === "cancelled", step);

    result.stage = "leave";
    await doctor.click("#leave");
    await kiosk1.click("#leave");
    await sleep(300);
    result.stage = "done";
    finish(true, "two kiosks queued (positions 1 and 2); the doctor took the first from the queue page; both met with media and vitals; the second moved to position 1");
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
