// Assisted teleconsultation and tele-expertise in Debian's chromium: on the consultation page
// the doctor mints an invite link for an orthoptist allowed to operate the devices; the link
// opens the invitee's page, which exchanges it for a token once and opens the consultation
// page, where the orthoptist measures the blood pressure; a second visit of the link is
// refused (409); the doctor takes a still from the kiosk and shares it, and the orthoptist's
// page shows it; a pharmacist (assistant) in the room may operate the devices once the doctor
// allows it on its page.
//
// Env: CABINE_URL, ROOM, DOCTOR_TOKEN, PHARMACIST_TOKEN. Optional: CHROMIUM, STEP_TIMEOUT_MS.
// Prints one JSON line `{"ok":...}`; exit status 0 when ok.

import { rmSync } from "node:fs";
import { driver, env, inbound, launchChromium, sleep } from "./harness.mjs";

const { result, finish, until } = driver("invite_pages", ["DOCTOR_TOKEN", "PHARMACIST_TOKEN"]);

async function main() {
  const base = env("CABINE_URL").replace(/\/+$/, "");
  const room = env("ROOM");
  const step = Number(process.env.STEP_TIMEOUT_MS || 30000);
  const consoleLines = [];
  let context;
  let dir;
  try {
    result.stage = "launch";
    ({ context, dir } = await launchChromium("cabine-invite-pages-", { width: 1200, height: 820 }));
    await context.grantPermissions(["camera", "microphone"], { origin: new URL(base).origin }).catch(() => {});
    const watch = (name, p) => {
      p.on("console", (m) => consoleLines.push(`${name} ${m.type()}: ${m.text()}`));
      p.on("pageerror", (e) => consoleLines.push(`${name} pageerror: ${e.message}`));
    };

    result.stage = "doctor";
    const doctor = context.pages()[0] || (await context.newPage());
    watch("doctor", doctor);
    await doctor.goto(`${base}/consult/${encodeURIComponent(room)}#token=${encodeURIComponent(env("DOCTOR_TOKEN"))}`);
    await until(doctor, "doctor_sees_kiosk", inbound, (s) => (s["room-camera"]?.frames || 0) > 5, step);
    await until(doctor, "doctor_channels", () => window.cabine.state.channels.size, (n) => n > 0, step);

    result.stage = "invite";
    await doctor.selectOption("#invite-kind", "orthoptist");
    await doctor.check("#invite-commands");
    await doctor.click("#invite");
    // Counted, not recorded: the link is a credential (the result line is a CI artifact).
    await until(doctor, "invite_links", () => window.cabine.assist.links.length, (n) => n === 1, step);
    const url = await doctor.evaluate(() => window.cabine.assist.links[0].url);
    if (!url.includes(`/invite/${room}#code=`)) throw new Error(`link ${url}`);
    await until(doctor, "invite_listed", () => window.cabine.assist.invites.map((i) => i.state), (s) => s.includes("pending"), step);

    result.stage = "invitee";
    const ortho = await context.newPage();
    watch("orthoptist", ortho);
    await ortho.goto(url);
    await ortho.waitForURL(new RegExp(`/consult/${room}$`), { timeout: step });
    await ortho.waitForFunction(() => window.cabine && window.cabine.assist, null, { timeout: step });
    result.checks.invitee_role = await ortho.evaluate(() => window.cabine.assist.role);
    if (result.checks.invitee_role !== "assistant") throw new Error(`invitee role ${result.checks.invitee_role}`);
    await until(ortho, "invitee_sees_kiosk", inbound, (s) => (s["room-camera"]?.frames || 0) > 5, step);
    await until(doctor, "doctor_sees_invitee_allowed", () => [...window.cabine.assist.assistants.entries()],
      (a) => a.some(([id, allowed]) => id.startsWith("orthoptist-") && allowed), step);

    result.stage = "invitee_measures";
    await until(ortho, "invitee_bp_enabled", () => !document.getElementById("measure-bp").disabled, (x) => x, step);
    await ortho.click("#measure-bp");
    await until(ortho, "invitee_bp_reading", () => ({ n: window.cabine.state.bpReadings, state: document.getElementById("bp-state").textContent }),
      (s) => s.n > 0 && !s.state.includes("refused"), step * 2);

    result.stage = "link_used";
    const again = await context.newPage();
    watch("again", again);
    await again.goto(url);
    const used = await until(again, "link_refused", () => ({ status: window.cabine.state.status, banner: document.getElementById("banner").textContent }),
      (s) => s.status !== null, step);
    if (used.status !== 409 || !used.banner.includes("used already")) throw new Error(`second visit: ${JSON.stringify(used)}`);
    await again.close();

    result.stage = "still";
    await doctor.evaluate(() => document.getElementById("snapshot").click());
    await until(doctor, "doctor_still", () => window.cabine.state.snapshot, (s) => s && s.width > 0, step * 2);
    await doctor.evaluate(() => document.getElementById("share-still").click());
    await until(ortho, "invitee_sees_still", () => window.cabine.assist.sharedStills,
      (s) => s.length === 1 && s[0].shown && s[0].width > 0, step);

    result.stage = "pharmacist";
    const pharmacist = await context.newPage();
    watch("pharmacist", pharmacist);
    await pharmacist.goto(`${base}/consult/${encodeURIComponent(room)}#token=${encodeURIComponent(env("PHARMACIST_TOKEN"))}`);
    await pharmacist.waitForFunction(() => window.cabine && window.cabine.assist, null, { timeout: step });
    await until(doctor, "doctor_lists_pharmacist", () => !!document.querySelector('button[data-identity="pharmacist-1"]'), (x) => x, step);
    await doctor.click('button[data-identity="pharmacist-1"]');
    await until(pharmacist, "pharmacist_allowed", () => ({ allowed: window.cabine.assist.commandsAllowed, text: document.getElementById("device-control").textContent }),
      (s) => s.allowed && s.text.includes("allows you"), step);

    result.stage = "leave";
    for (const p of [doctor, ortho, pharmacist]) await p.click("#leave");
    await sleep(300);
    result.stage = "done";
    finish(true, "invite link minted on the doctor's page, redeemed once by the orthoptist who measured BP; shared still seen; pharmacist allowed from the doctor's page");
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
