// The doctor's page in a cluster: opened on a node that does not hold the room, it is told to
// go to the node that does (the WebSocket's `redirect` message) and opens itself there, token
// and all; there the cabin's video plays and its vitals show. A page that already followed 3
// redirects in a row stops with an error instead of a 4th.
//
// Env: CABINE_URL (the node given), OWNER_URL (the node that holds the room), ROOM,
// DOCTOR_TOKEN. Optional: CHROMIUM, STEP_TIMEOUT_MS (default 30000).
// Prints one JSON line `{"ok":...}`; exit status 0 when ok.

import { rmSync } from "node:fs";
import { driver, env, inbound, launchPage, sleep } from "./harness.mjs";

const { result, finish, until, log } = driver("cluster_consult", ["DOCTOR_TOKEN"]);

async function main() {
  const base = env("CABINE_URL").replace(/\/+$/, "");
  const owner = new URL(env("OWNER_URL")).origin;
  const room = env("ROOM");
  const token = env("DOCTOR_TOKEN");
  const step = Number(process.env.STEP_TIMEOUT_MS || 30000);
  const consoleLines = [];
  let context;
  let userDataDir;
  try {
    result.stage = "launch";
    let page;
    ({ context, dir: userDataDir, page } = await launchPage("cabine-cluster-", { width: 1024, height: 700 },
      [new URL(base).origin, owner], consoleLines));

    result.stage = "redirect";
    await page.goto(`${base}/consult/${encodeURIComponent(room)}#token=${encodeURIComponent(token)}`);
    const deadline = Date.now() + step;
    for (;;) {
      // The page navigates away by itself: its context may be gone mid-evaluation.
      const origin = await page.evaluate(() => location.origin).catch(() => "");
      if (origin === owner) break;
      if (Date.now() > deadline) throw new Error(`the page stayed on ${origin || "?"}, not ${owner}`);
      await sleep(100);
    }
    await page.waitForLoadState("load");
    log(`redirected to ${owner}`);
    result.checks.token_left_address_bar = await page.evaluate(() => !location.href.includes("token"));
    if (!result.checks.token_left_address_bar) throw new Error("the token is still in the address bar");

    result.stage = "video";
    await until(page, "room_camera_frames", inbound, (s) => (s["room-camera"]?.frames || 0) > 5, step * 2);

    result.stage = "vitals";
    await until(page, "vitals", () => window.cabine.state.vitals, (v) => v.spo2 && v.pulse, step);

    // A page that has already followed 3 redirects in a row (the count rides in the
    // fragment) does not follow a fourth: it stays and says why, rather than bouncing
    // between nodes that disagree on the owner.
    result.stage = "hop_limit";
    const looping = await context.newPage();
    looping.on("console", (m) => consoleLines.push(`looping ${m.type()}: ${m.text()}`));
    await looping.goto(`${base}/consult/${encodeURIComponent(room)}#token=${encodeURIComponent(token)}&hops=3`);
    await until(looping, "redirect_loop_shown", () => window.cabine.state.messages,
      (m) => m.some((t) => t.includes("redirected this page 3 times")), step);
    const stayed = await looping.evaluate(() => location.origin);
    result.checks.loop_page_stayed = stayed === new URL(base).origin;
    if (!result.checks.loop_page_stayed) throw new Error(`the page followed a 4th redirect to ${stayed}`);

    result.stage = "done";
    finish(true, "redirected; video and vitals on the room's node; a 4th redirect in a row refused");
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
