// Browser end to end: Debian's chromium (fake camera and microphone) publishes over WHIP from
// /demo/publish, a second page plays the room over WHEP from /demo/watch, and we wait until the
// watcher decodes video frames and receives audio packets, with the publisher's track labels.
//
// Env: CABINE_URL (http://127.0.0.1:PORT), ROOM, PUBLISH_TOKEN (kiosk), WATCH_TOKEN (doctor).
// Optional: CHROMIUM (default /usr/bin/chromium), MEDIA_TIMEOUT_MS (default 30000),
// SCREENSHOT (default <workspace>/target/screenshots/whep-watch.png), STETHOSCOPE=0 to publish
// only camera + microphone, HOLD_MS (default 1500) to keep media flowing longer before the final
// statistics, POLL_MS (default 250) between statistics polls while waiting for media.
//
// Prints one JSON line `{"ok":true|false,...}` on stdout; exit status 0 when ok, 1 otherwise.

import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const started = Date.now();
const elapsed = () => Date.now() - started;
const log = (msg) => process.stderr.write(`[whip_whep +${(elapsed() / 1000).toFixed(1)}s] ${msg}\n`);

const result = { ok: false, stage: "setup", timings_ms: {}, labels: [], watcher: null, publisher: null };

// Tokens never reach our output (they would in navigation errors, which quote the URL).
function redact(text) {
  let out = text;
  for (const name of ["PUBLISH_TOKEN", "WATCH_TOKEN"]) {
    const t = process.env[name];
    if (t) out = out.split(t).join(`<${name}>`).split(encodeURIComponent(t)).join(`<${name}>`);
  }
  return out;
}

function finish(ok, message) {
  result.ok = ok;
  result.message = redact(message);
  result.timings_ms.total = elapsed();
  process.stdout.write(redact(JSON.stringify(result)) + "\n");
  if (!ok) process.stderr.write(`whip_whep FAILED at stage "${result.stage}": ${result.message}\n`);
  else process.stderr.write(`whip_whep ok: ${result.message}\n`);
}

function env(name) {
  const v = process.env[name];
  if (!v) throw new Error(`environment variable ${name} is required`);
  return v;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function main() {
  const base = env("CABINE_URL").replace(/\/+$/, "");
  const room = env("ROOM");
  const publishToken = env("PUBLISH_TOKEN");
  const watchToken = env("WATCH_TOKEN");
  const chromium = process.env.CHROMIUM || "/usr/bin/chromium";
  const mediaTimeout = Number(process.env.MEDIA_TIMEOUT_MS || 30000);
  const stethoscope = process.env.STETHOSCOPE !== "0";
  const screenshot = process.env.SCREENSHOT || resolve(here, "../../target/screenshots/whep-watch.png");
  const expected = stethoscope ? ["camera", "microphone", "stethoscope"] : ["camera", "microphone"];

  if (!existsSync(chromium)) {
    throw new Error(`${chromium} not found: install Debian's chromium (apt-get install chromium, or run .ci/run)`);
  }
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
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        "--autoplay-policy=no-user-gesture-required",
      ],
      viewport: { width: 1100, height: 900 },
      timeout: 30000,
    });
    result.timings_ms.launch = elapsed();
    const origin = new URL(base).origin;
    await context.grantPermissions(["camera", "microphone"], { origin }).catch(() => {});
    const watchConsole = (name, page) => {
      page.on("console", (m) => consoleLines.push(`${name} ${m.type()}: ${m.text()}`));
      page.on("pageerror", (e) => consoleLines.push(`${name} pageerror: ${e.message}`));
    };

    // --- publish ---------------------------------------------------------------------------
    result.stage = "publish";
    const pub = context.pages()[0] || (await context.newPage());
    watchConsole("publish", pub);
    const frag = (token, extra) =>
      `#room=${encodeURIComponent(room)}&token=${encodeURIComponent(token)}${extra}`;
    await pub.goto(`${base}/demo/publish${frag(publishToken, stethoscope ? "&stethoscope=1" : "")}`);
    const pubState = await waitState(pub, 20000);
    result.publisher = await pub.evaluate(() => ({ state: window.cabine.state, labels: window.cabine.labels }));
    if (pubState !== "live") throw new Error(`publish page did not go live: ${pubState}`);
    result.timings_ms.publish_live = elapsed();
    log(`publisher live (${result.publisher.labels.join(", ")})`);

    // --- watch -----------------------------------------------------------------------------
    result.stage = "watch";
    const watch = await context.newPage();
    watchConsole("watch", watch);
    const nAudio = stethoscope ? 2 : 1;
    // Time to first frame is counted from here: the watch page loads, offers over WHEP and
    // plays (benches/chromium_first_frame.sh reports it).
    result.timings_ms.watch_start = elapsed();
    await watch.goto(`${base}/demo/watch${frag(watchToken, `&video=1&audio=${nAudio}`)}`);
    const watchState = await waitState(watch, 20000);
    if (watchState !== "live") {
      result.watcher = await snapshot(watch);
      throw new Error(`watch page did not go live: ${watchState}`);
    }
    result.timings_ms.watch_live = elapsed();
    log("watcher live");

    // --- media -----------------------------------------------------------------------------
    result.stage = "media";
    const deadline = Date.now() + mediaTimeout;
    let snap;
    for (;;) {
      snap = await snapshot(watch);
      const video = snap.inbound.filter((r) => r.kind === "video");
      const audio = snap.inbound.filter((r) => r.kind === "audio");
      const videoOk = video.length > 0 && video.every((r) => r.framesDecoded > 0);
      const audioOk = audio.length >= nAudio && audio.every((r) => r.packetsReceived > 0);
      if (videoOk && audioOk) break;
      if (Date.now() > deadline) {
        result.watcher = snap;
        throw new Error(
          `no media after ${mediaTimeout} ms: video ${JSON.stringify(video)}, audio ${JSON.stringify(audio)}`,
        );
      }
      await sleep(Number(process.env.POLL_MS || 250));
    }
    result.timings_ms.first_media = elapsed();
    result.timings_ms.first_frame = result.timings_ms.first_media - result.timings_ms.watch_start;
    log("watcher decodes video and receives audio");
    // A little more media, so the numbers (and the screenshot) mean something.
    await sleep(Number(process.env.HOLD_MS || 1500));
    snap = await snapshot(watch);
    result.watcher = snap;
    result.publisher = { ...result.publisher, ...(await publisherStats(pub)) };
    result.labels = snap.tracks.map((t) => t.label);

    result.stage = "labels";
    const missing = expected.filter((l) => !result.labels.includes(l));
    if (missing.length) {
      throw new Error(`watch page lacks track labels ${JSON.stringify(missing)}; it has ${JSON.stringify(result.labels)}`);
    }
    const kinds = Object.fromEntries(snap.tracks.map((t) => [t.label, t.kind]));
    if (kinds.camera !== "video" || kinds.microphone !== "audio" || (stethoscope && kinds.stethoscope !== "audio")) {
      throw new Error(`track kinds do not match their labels: ${JSON.stringify(kinds)}`);
    }
    for (const t of snap.tracks) {
      if (t.stream !== "publisher") throw new Error(`track ${t.label} has stream id ${t.stream}, expected "publisher"`);
    }

    // The stethoscope is encoded as the page promises: Opus in music mode (libwebrtc picks the
    // "audio" application for 2-channel encoders) at >= 64 kbit/s.
    if (stethoscope) {
      result.stage = "stethoscope";
      const st = result.publisher.outbound.find((o) => o.label === "stethoscope");
      if (!st) throw new Error("the publisher has no outbound stethoscope stream");
      if (!/(^|;)stereo=1(;|$)/.test(st.fmtp || "")) {
        throw new Error(`stethoscope Opus is not in music (stereo) mode: fmtp ${st.fmtp}`);
      }
      if (typeof st.targetBitrate === "number" && st.targetBitrate < 64000) {
        throw new Error(`stethoscope target bitrate ${st.targetBitrate} < 64000`);
      }
    }

    result.stage = "screenshot";
    mkdirSync(dirname(screenshot), { recursive: true });
    await watch.screenshot({ path: screenshot, fullPage: true });
    result.screenshot = screenshot;

    // A refused publish shows the server's message.
    result.stage = "refused";
    const bad = await context.newPage();
    watchConsole("refused", bad);
    await bad.goto(`${base}/demo/publish${frag("not-a-token", "")}`);
    const badState = await waitState(bad, 15000);
    if (!/^error: .*401/.test(badState)) {
      throw new Error(`a publish with a bad token should show "error: <server message>" with 401, shows: ${badState}`);
    }
    result.refused = badState;
    await bad.close();

    // Leave cleanly: pagehide sends DELETE for both sessions.
    result.stage = "close";
    await watch.close({ runBeforeUnload: true });
    await pub.close({ runBeforeUnload: true });
    await sleep(300);
    result.stage = "done";
    const v = snap.inbound.find((r) => r.kind === "video");
    finish(
      true,
      `labels ${JSON.stringify(result.labels)}; video ${v.frameWidth}x${v.frameHeight}, ${v.framesDecoded} frames decoded; ` +
        `first media after ${result.timings_ms.first_media} ms`,
    );
    return 0;
  } catch (e) {
    result.console = consoleLines.slice(-40);
    finish(false, e.message || String(e));
    return 1;
  } finally {
    if (context) await context.close().catch(() => {});
    rmSync(userDataDir, { recursive: true, force: true });
  }
}

// Waits until the page's window.cabine.state is "live" or an error; returns the state.
async function waitState(page, ms) {
  try {
    await page.waitForFunction(
      () => window.cabine && (window.cabine.state === "live" || /^(error|closed)/.test(window.cabine.state)),
      null,
      { timeout: ms, polling: 100 },
    );
  } catch (_) {
    // fall through: report whatever state it is in
  }
  return page.evaluate(() => (window.cabine ? window.cabine.state : "no window.cabine"));
}

// The watcher's view: its tracks and its inbound-rtp statistics, labelled by mid.
async function snapshot(page) {
  return page.evaluate(async () => {
    const c = window.cabine;
    const out = { state: c.state, tracks: c.tracks, inbound: [], connection: c.pc && c.pc.connectionState };
    if (!c.pc) return out;
    const stats = await c.pc.getStats();
    const byMid = Object.fromEntries(c.tracks.map((t) => [t.mid, t.label]));
    stats.forEach((r) => {
      if (r.type === "candidate-pair" && r.nominated) {
        out.candidatePair = { state: r.state, bytesReceived: r.bytesReceived, bytesSent: r.bytesSent, rtt: r.currentRoundTripTime };
      }
      if (r.type !== "inbound-rtp") return;
      const codec = r.codecId && stats.get(r.codecId);
      out.inbound.push({
        kind: r.kind,
        mid: r.mid,
        label: byMid[r.mid] || null,
        codec: codec ? codec.mimeType : null,
        packetsReceived: r.packetsReceived || 0,
        packetsLost: r.packetsLost || 0,
        bytesReceived: r.bytesReceived || 0,
        framesDecoded: r.framesDecoded,
        frameWidth: r.frameWidth,
        frameHeight: r.frameHeight,
        keyFramesDecoded: r.keyFramesDecoded,
        nackCount: r.nackCount,
        pliCount: r.pliCount,
        jitter: r.jitter,
        framesPerSecond: r.framesPerSecond,
      });
    });
    if (!c.answer || !out.inbound.length) out.answer = c.answer;
    return out;
  });
}

async function publisherStats(page) {
  return page.evaluate(async () => {
    const c = window.cabine;
    const outbound = [];
    if (!c.pc) return { outbound };
    const stats = await c.pc.getStats();
    const labelByMid = {};
    c.pc.getTransceivers().forEach((t, i) => { labelByMid[t.mid] = c.labels[i]; });
    let availableOutgoingBitrate;
    stats.forEach((r) => {
      if (r.type === "candidate-pair" && r.nominated) availableOutgoingBitrate = r.availableOutgoingBitrate;
      if (r.type !== "outbound-rtp") return;
      const codec = r.codecId && stats.get(r.codecId);
      outbound.push({
        kind: r.kind,
        label: labelByMid[r.mid] || null,
        codec: codec ? codec.mimeType + (codec.channels ? "/" + codec.channels : "") : null,
        fmtp: codec ? codec.sdpFmtpLine : null,
        packetsSent: r.packetsSent,
        bytesSent: r.bytesSent,
        targetBitrate: r.targetBitrate,
        framesEncoded: r.framesEncoded,
        frameWidth: r.frameWidth,
        frameHeight: r.frameHeight,
        encoderImplementation: r.encoderImplementation,
        framesPerSecond: r.framesPerSecond,
        qualityLimitationReason: r.qualityLimitationReason,
      });
    });
    return { outbound, availableOutgoingBitrate };
  });
}

main().then(
  (code) => process.exit(code),
  (e) => {
    finish(false, e.message || String(e));
    process.exit(1);
  },
);
