// Cross-origin WHIP/WHEP: Debian's chromium opens a page served from ANOTHER origin (a second
// loopback port, PAGE_URL) that publishes camera and microphone to the Cabine server over WHIP
// and plays them back over WHEP with fetch() calls across origins (CORS, bearer tokens, no
// credentials). The page reads the Location, ETag and Link headers (exposed by CORS), and ends
// both sessions with DELETE.
//
// Env: CABINE_URL, PAGE_URL, ROOM, PUBLISH_TOKEN, WATCH_TOKEN. Optional: CHROMIUM,
// MEDIA_TIMEOUT_MS (default 30000).
//
// Prints one JSON line: {"ok":..., "checks": {publish: {status, location, etag, link}, watch:
// {...}, media: {...}, deleted: [..]}}.

import { rmSync } from "node:fs";
import { driver, env, launchChromium } from "./harness.mjs";

const { result, log, finish, until } = driver("cross_origin", ["PUBLISH_TOKEN", "WATCH_TOKEN"]);

// Runs in the page (the other origin): one WHIP or WHEP session; keeps the peer connection in
// `window.sessions[kind]` and returns what the server's response let the page read.
const open = async ({ base, room, token, kind }) => {
  const pc = new RTCPeerConnection();
  if (kind === "whip") {
    const stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
    for (const t of stream.getTracks()) pc.addTransceiver(t, { direction: "sendonly", streams: [stream] });
  } else {
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.addTransceiver("audio", { direction: "recvonly" });
    const video = document.createElement("video");
    video.autoplay = true;
    video.muted = true;
    document.body.append(video);
    pc.ontrack = (e) => {
      video.srcObject = e.streams[0] || new MediaStream([e.track]);
    };
  }
  await pc.setLocalDescription(await pc.createOffer());
  // Non-trickle: wait for the host candidates (loopback: immediate), at most 3 s.
  await new Promise((done) => {
    if (pc.iceGatheringState === "complete") return done();
    const t = setTimeout(done, 3000);
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") {
        clearTimeout(t);
        done();
      }
    });
  });
  const r = await fetch(`${base}/${kind}/${encodeURIComponent(room)}`, {
    method: "POST",
    headers: { "Content-Type": "application/sdp", Authorization: `Bearer ${token}` },
    body: pc.localDescription.sdp,
  });
  const answer = await r.text();
  const out = {
    status: r.status,
    location: r.headers.get("Location"),
    etag: r.headers.get("ETag"),
    link: r.headers.get("Link"),
    answer_direction: (answer.match(/^a=(sendonly|recvonly|sendrecv)/gm) || []).join(" "),
  };
  if (r.status !== 201) {
    out.error = answer;
    return out;
  }
  await pc.setRemoteDescription({ type: "answer", sdp: answer });
  window.sessions = window.sessions || {};
  window.sessions[kind] = { pc, url: new URL(out.location, base).href, token };
  return out;
};

// Runs in the page: what the WHEP session receives.
const received = async () => {
  const s = window.sessions && window.sessions.whep;
  if (!s) return null;
  const o = { video_frames: 0, audio_packets: 0, state: s.pc.connectionState };
  (await s.pc.getStats()).forEach((r) => {
    if (r.type !== "inbound-rtp") return;
    if (r.kind === "video") o.video_frames += r.framesDecoded || 0;
    if (r.kind === "audio") o.audio_packets += r.packetsReceived || 0;
  });
  return o;
};

// Runs in the page: DELETE both sessions across origins; their statuses.
const close = async () => {
  const out = [];
  for (const kind of ["whep", "whip"]) {
    const s = window.sessions[kind];
    const r = await fetch(s.url, { method: "DELETE", headers: { Authorization: `Bearer ${s.token}` } });
    out.push(r.status);
    s.pc.close();
  }
  return out;
};

async function main() {
  const base = env("CABINE_URL").replace(/\/+$/, "");
  const pageUrl = env("PAGE_URL");
  const room = env("ROOM");
  const mediaTimeout = Number(process.env.MEDIA_TIMEOUT_MS || 30000);
  if (new URL(pageUrl).origin === new URL(base).origin) throw new Error("the page must be on another origin");

  result.stage = "launch";
  const { context, dir } = await launchChromium("cabine-cross-origin-", { width: 800, height: 600 });
  const consoleLines = [];
  try {
    await context.grantPermissions(["camera", "microphone"], { origin: new URL(pageUrl).origin }).catch(() => {});
    const page = context.pages()[0] || (await context.newPage());
    page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
    page.on("pageerror", (e) => consoleLines.push(`pageerror: ${e.message}`));
    await page.goto(pageUrl);
    result.checks.page_origin = await page.evaluate(() => location.origin);

    result.stage = "publish";
    const pub = await page.evaluate(open, { base, room, token: env("PUBLISH_TOKEN"), kind: "whip" });
    result.checks.publish = pub;
    if (pub.status !== 201) throw new Error(`WHIP POST from another origin: ${pub.status} ${pub.error || ""}`);
    if (!pub.location || !pub.etag) throw new Error(`the page cannot read Location/ETag: ${JSON.stringify(pub)}`);
    log(`published: ${pub.location}`);

    result.stage = "watch";
    const watch = await page.evaluate(open, { base, room, token: env("WATCH_TOKEN"), kind: "whep" });
    result.checks.watch = watch;
    if (watch.status !== 201) throw new Error(`WHEP POST from another origin: ${watch.status} ${watch.error || ""}`);

    result.stage = "media";
    await until(page, "media", received, (v) => v && v.video_frames > 0 && v.audio_packets > 0, mediaTimeout);

    result.stage = "delete";
    result.checks.deleted = await page.evaluate(close);
    if (result.checks.deleted.some((s) => s !== 200)) throw new Error(`DELETE across origins: ${result.checks.deleted}`);
    result.stage = "done";
    finish(true, "published over WHIP and played over WHEP from another origin");
  } catch (e) {
    result.console = consoleLines.slice(-20);
    finish(false, String(e && e.stack ? e.stack : e));
    process.exitCode = 1;
  } finally {
    await context.close().catch(() => {});
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  finish(false, String(e && e.stack ? e.stack : e));
  process.exitCode = 1;
});
