// The operators' dashboard in Debian's chromium: /ops without a token and with a refused one
// shows why; with an operator token it shows the live room, the kiosk in the fleet (in
// consultation, by pseudonym), its numbers move between two reads,
// sparklines are drawn, and no room name or identity appears anywhere in the page. Then the
// server goes away (the Rust side shuts it down when READY_FILE appears) and the page must say
// "reconnecting…".
//
// Env: CABINE_URL, OPS_TOKEN (operator, room *), FORBIDDEN (comma-separated strings that must
// not appear in the page), READY_FILE (written once the live checks pass). Optional: CHROMIUM
// (default /usr/bin/chromium), SCREENSHOT (default <workspace>/target/screenshots/ops.png),
// OPS_HOLD_MS (default 0: time to let history accumulate before the checks and the screenshot).
//
// Prints one JSON line `{"ok":true|false,...}` on stdout; exit status 0 when ok, 1 otherwise.

import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const started = Date.now();
const elapsed = () => Date.now() - started;
const log = (msg) => process.stderr.write(`[ops +${(elapsed() / 1000).toFixed(1)}s] ${msg}\n`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const result = { ok: false, stage: "setup", timings_ms: {} };

function redact(text) {
  const t = process.env.OPS_TOKEN;
  return t ? text.split(t).join("<OPS_TOKEN>").split(encodeURIComponent(t)).join("<OPS_TOKEN>") : text;
}

function finish(ok, message) {
  result.ok = ok;
  result.message = redact(message);
  result.timings_ms.total = elapsed();
  process.stdout.write(redact(JSON.stringify(result)) + "\n");
  process.stderr.write(ok ? `ops ok: ${result.message}\n` : `ops FAILED at stage "${result.stage}": ${result.message}\n`);
}

function env(name) {
  const v = process.env[name];
  if (!v) throw new Error(`environment variable ${name} is required`);
  return v;
}

// Polls `fn` in the page until it returns a truthy value; returns it, or throws with `what`.
async function until(page, what, ms, fn, arg) {
  try {
    const h = await page.waitForFunction(fn, arg, { timeout: ms, polling: 100 });
    return await h.jsonValue();
  } catch (e) {
    const status = await page.evaluate(() => document.getElementById("status").textContent).catch(() => "?");
    throw new Error(`${what} (not within ${ms} ms; status "${status}")`);
  }
}

// What the streams table shows now, by stream key.
const readStreams = (page) =>
  page.evaluate(() =>
    Object.fromEntries(
      [...document.querySelectorAll("#streams tr[data-stream]")].map((tr) => [
        tr.dataset.stream,
        {
          health: tr.className,
          packets: Number(tr.querySelector('[data-col="packets"]').textContent.replace(/,/g, "")),
          bitrate: tr.querySelector('[data-col="bitrate"]').textContent,
          loss: tr.querySelector('[data-col="loss"]').textContent,
          sparkPoints: [...tr.querySelectorAll("svg.spark")].map((s) => Number(s.dataset.points)),
          text: tr.innerText.replace(/\s+/g, " "),
        },
      ]),
    ),
  );

async function main() {
  const base = env("CABINE_URL").replace(/\/+$/, "");
  const token = env("OPS_TOKEN");
  const forbidden = env("FORBIDDEN").split(",").filter(Boolean);
  const readyFile = env("READY_FILE");
  const chromium = process.env.CHROMIUM || "/usr/bin/chromium";
  const screenshot = process.env.SCREENSHOT || resolve(here, "../../target/screenshots/ops.png");
  if (!existsSync(chromium)) throw new Error(`${chromium} not found: install Debian's chromium (apt-get install chromium, or run .ci/run)`);
  let playwright;
  try {
    playwright = await import("playwright-core");
  } catch (e) {
    throw new Error(`playwright-core is not installed: run \`npm ci --prefix tests/browser\` (${e.message})`);
  }

  const userDataDir = mkdtempSync(join(tmpdir(), "cabine-chromium-"));
  const consoleLines = [];
  let context;
  try {
    result.stage = "launch";
    context = await playwright.chromium.launchPersistentContext(userDataDir, {
      executablePath: chromium,
      headless: true,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"],
      viewport: { width: 1360, height: 900 },
      colorScheme: "light",
      timeout: 30000,
    });
    result.timings_ms.launch = elapsed();
    const page = context.pages()[0] || (await context.newPage());
    page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
    page.on("pageerror", (e) => consoleLines.push(`pageerror: ${e.message}`));

    // --- no token, then a refused one ----------------------------------------------------------
    result.stage = "no-token";
    await page.goto(`${base}/ops`);
    await until(page, "the page says there is no token", 5000,
      () => document.getElementById("status").dataset.state === "no-token" && !document.getElementById("message").hidden);
    result.stage = "refused";
    await page.goto(`${base}/ops#token=not-a-token`);
    await page.reload(); // a fragment-only change does not reload the page
    result.refused = await until(page, "a bad token is shown as refused with 401", 5000, () => {
      const s = document.getElementById("status");
      const m = document.getElementById("message");
      return s.dataset.state === "refused" && /401/.test(s.textContent) && !m.hidden && m.textContent;
    });

    // --- live -----------------------------------------------------------------------------------
    result.stage = "live";
    await page.goto("about:blank");
    await page.goto(`${base}/ops#token=${encodeURIComponent(token)}`);
    await until(page, "the dashboard goes live with a room and its streams", 10000, () =>
      window.cabineOps && window.cabineOps.status === "live" &&
      document.querySelectorAll("#rooms [data-room]").length > 0 &&
      document.querySelectorAll("#streams tr[data-stream]").length > 0);
    result.timings_ms.live = elapsed();
    const rooms = await page.$$eval("#rooms [data-room]", (els) => els.map((e) => e.dataset.room));
    if (rooms.length !== 1 || !/^#[0-9a-f]{8}$/.test(rooms[0])) throw new Error(`expected one pseudonymous room, got ${JSON.stringify(rooms)}`);
    result.room = rooms[0];
    result.kiosks = await page.$$eval("#kiosks tr[data-kiosk]", (els) => els.length);
    if (result.kiosks !== 1) throw new Error(`expected one kiosk row, got ${result.kiosks}`);
    // The fleet (presence from the store, read every 5 s): the publishing kiosk is in
    // consultation, by pseudonym.
    result.fleet = await until(page, "the fleet shows the kiosk in consultation", 15000, () => {
      const rows = [...document.querySelectorAll("#fleet tr[data-fleet]")];
      return rows.length === 1 && rows[0].dataset.state === "in_consultation" && rows[0].dataset.fleet;
    });
    if (!/^#[0-9a-f]{8}$/.test(result.fleet)) throw new Error(`the fleet row is not a pseudonym: ${result.fleet}`);

    // Optionally let history accumulate (for a README screenshot with long sparklines); the
    // room must stay live all along.
    const holdUntil = Date.now() + Number(process.env.OPS_HOLD_MS || 0);
    while (Date.now() < holdUntil) {
      await sleep(1000);
      const sessions = await page.evaluate(() => window.cabineOps.last.node.sessions);
      if (sessions !== 2) throw new Error(`the room lost its sessions during the hold: ${sessions} left after ${elapsed()} ms`);
    }

    // --- numbers move -----------------------------------------------------------------------------
    result.stage = "updates";
    const first = await readStreams(page);
    const viewsBefore = await page.evaluate(() => window.cabineOps.views);
    await until(page, "two more views arrive", 5000, (n) => window.cabineOps.views >= n + 2, viewsBefore);
    await sleep(300);
    const second = await readStreams(page);
    const moved = Object.keys(first).filter((k) => second[k] && second[k].packets > first[k].packets);
    if (!moved.length) throw new Error(`no stream's packet count grew between two reads: ${JSON.stringify({ first, second })}`);
    const bitrates = Object.values(second).filter((s) => /bit\/s$/.test(s.bitrate));
    if (!bitrates.length) throw new Error(`no stream shows a bitrate: ${JSON.stringify(second)}`);
    result.streams = second;
    result.moved = moved.length;

    // --- health and order: the lossy stethoscope is first, and marked ----------------------------
    result.stage = "health";
    // The stethoscope's loss is known once the engine has sent its first receiver report (about
    // a second of media): wait for the table to put a stream that is not healthy first.
    let order = Object.values(await readStreams(page));
    for (const deadline = Date.now() + 10000; order[0].health === "good" && Date.now() < deadline; ) {
      await sleep(200);
      order = Object.values(await readStreams(page));
    }
    if (order[0].health === "good") throw new Error(`the first (worst) stream stayed healthy for 10 s: ${JSON.stringify(order)}`);
    if (!order.some((s) => s.health === "good")) throw new Error(`no healthy stream shown: ${JSON.stringify(order)}`);

    // --- sparklines ---------------------------------------------------------------------------------
    result.stage = "sparklines";
    result.sparklines = await until(page, "sparklines drawn (node cards and stream rows, several points each)", 8000, () => {
      const pts = (sel) => [...document.querySelectorAll(sel)].map((s) => Number(s.dataset.points));
      const node = pts('#node [data-card="packets"] svg.spark, #node [data-card="bitrate"] svg.spark');
      const streams = pts("#streams svg.spark");
      const drawn = (a) => a.length > 0 && a.some((n) => n >= 3);
      const paths = document.querySelectorAll("svg.spark path[d*='L']").length;
      return drawn(node) && drawn(streams) && paths >= 3 && { node, streams: streams.length, paths };
    });

    // --- nothing identifying anywhere ---------------------------------------------------------------
    result.stage = "pseudonymous";
    const everything = await page.evaluate(() => document.documentElement.outerHTML + "\n" + document.body.innerText + "\n" + document.title);
    const leaked = forbidden.filter((f) => everything.toLowerCase().includes(f.toLowerCase()));
    if (leaked.length) throw new Error(`the page shows ${JSON.stringify(leaked)}`);
    if (everything.includes(token)) throw new Error("the page shows the token");

    result.stage = "screenshot";
    mkdirSync(dirname(screenshot), { recursive: true });
    await page.screenshot({ path: screenshot, fullPage: true });
    result.screenshot = screenshot;

    // --- the server goes away -------------------------------------------------------------------------
    result.stage = "reconnecting";
    writeFileSync(readyFile, "ready\n");
    await until(page, 'the page shows "reconnecting…" once the server is gone', 20000, () => {
      const s = document.getElementById("status");
      return s.dataset.state === "reconnecting" && s.textContent === "reconnecting…";
    });
    result.timings_ms.reconnecting = elapsed();

    result.stage = "done";
    finish(true, `room ${result.room} live; ${result.moved} streams moved; sparklines ${JSON.stringify(result.sparklines)}`);
    return 0;
  } catch (e) {
    result.console = consoleLines.slice(-40);
    // What the page last received, in short (pseudonymous by construction).
    result.lastView = await context?.pages()[0]?.evaluate(() => {
      const v = window.cabineOps && window.cabineOps.last;
      return v && { time_ms: v.time_ms, node: { rooms: v.node.rooms, sessions: v.node.sessions, kiosks: v.node.kiosks }, streams: v.streams.length };
    }).catch(() => null);
    finish(false, e.message || String(e));
    return 1;
  } finally {
    if (context) await context.close().catch(() => {});
    rmSync(userDataDir, { recursive: true, force: true });
  }
}

main().then(
  (code) => process.exit(code),
  (e) => {
    finish(false, e.message || String(e));
    process.exit(1);
  },
);
