// Quality on poor links, in Debian's chromium: the kiosk page and the doctor's page against a
// real server whose media address is a cabine-impair relay (the Rust test owns the relay and
// changes its links). Two modes:
//
// - MODE=simulcast: the kiosk page's offer carries simulcast (three rids on the room camera);
//   the doctor's page receives the room camera at full width, writes "top" to PHASE_FILE (the
//   test then shrinks the doctor's downlink), sees a lower layer (frameWidth drops) while frames
//   keep being decoded (never paused), writes "low" (the test restores the link), and sees the
//   full width again.
// - MODE=red: the kiosk page publishes a stethoscope; two doctor's pages receive it under loss
//   on their downlink, one with RED (RFC 2198) as negotiated, one whose answer refuses RED. For
//   each: the negotiated codecs, packets lost, and samples concealed over the same window.
//
// Env: CABINE_URL, ROOM, MODE, KIOSK_TOKEN, DOCTOR_TOKEN, (red) DOCTOR2_TOKEN, (simulcast)
// PHASE_FILE. Optional: CHROMIUM, STEP_TIMEOUT_MS (default 60000), RED_PACKETS (default 1500).
// Prints one JSON line `{"ok":...}`; exit status 0 when ok.

import { rmSync, writeFileSync } from "node:fs";
import { driver, env, launchChromium, sleep } from "./harness.mjs";

const { result, finish, until, log } = driver("quality", ["KIOSK_TOKEN", "DOCTOR_TOKEN", "DOCTOR2_TOKEN"]);

// Run in a page: the inbound room camera of the subscribe connection.
const roomCamera = async () => {
  const s = window.cabine.session;
  if (!s.sub) return null;
  let out = null;
  (await s.sub.getStats()).forEach((r) => {
    if (r.type !== "inbound-rtp" || r.kind !== "video") return;
    const info = s.tracks.get(r.mid);
    if (!info || info.label !== "room-camera") return;
    out = { width: r.frameWidth || 0, frames: r.framesDecoded || 0, packets: r.packetsReceived || 0 };
  });
  return out;
};

// Run in a page: the inbound stethoscope (counters and codec) and whether the subscribe
// connection's answer accepted RED on its m-line.
const stethoscope = async () => {
  const s = window.cabine.session;
  if (!s.sub) return null;
  const stats = await s.sub.getStats();
  let out = null;
  stats.forEach((r) => {
    if (r.type !== "inbound-rtp" || r.kind !== "audio") return;
    const info = s.tracks.get(r.mid);
    if (!info || info.label !== "stethoscope") return;
    const codec = r.codecId ? stats.get(r.codecId) : null;
    const section = (s.sub.localDescription?.sdp || "").split("\r\nm=").find((m) => m.includes(`\r\na=mid:${r.mid}\r\n`)) || "";
    out = {
      mid: r.mid,
      codec: codec ? codec.mimeType : "",
      red_in_answer: /a=rtpmap:\d+ red\/48000\/2/i.test(section),
      received: r.packetsReceived || 0,
      lost: r.packetsLost || 0,
      samples: r.totalSamplesReceived || 0,
      concealed: r.concealedSamples || 0,
      fec: r.fecPacketsReceived || 0,
    };
  });
  return out;
};

async function main() {
  const base = env("CABINE_URL").replace(/\/+$/, "");
  const room = encodeURIComponent(env("ROOM"));
  const mode = env("MODE");
  const step = Number(process.env.STEP_TIMEOUT_MS || 60000);
  const consoleLines = [];
  let context;
  let dir;
  try {
    result.stage = "launch";
    // Three simulcast layers from a 640x480 camera: without this, libwebrtc's legacy limit
    // sends at most two layers below 960x540 (a cabin's HD camera gets three anyway).
    ({ context, dir } = await launchChromium("cabine-quality-", { width: 1000, height: 700 },
      ["--force-fieldtrials=WebRTC-LegacySimulcastLayerLimit/Disabled/"]));
    await context.grantPermissions(["camera", "microphone"], { origin: new URL(base).origin }).catch(() => {});
    const open = async (path, what) => {
      const page = await context.newPage();
      page.on("console", (m) => consoleLines.push(`${what} ${m.type()}: ${m.text()}`));
      page.on("pageerror", (e) => consoleLines.push(`${what} pageerror: ${e.message}`));
      await page.goto(`${base}${path}`);
      return page;
    };

    result.stage = "kiosk";
    const steth = mode === "red" ? "&stethoscope=1" : "";
    const kiosk = await open(`/kiosk/${room}#token=${encodeURIComponent(env("KIOSK_TOKEN"))}${steth}`, "kiosk");
    await until(kiosk, "kiosk_published", () => window.cabine.state.published,
      (p) => p.includes("room-camera") && (mode !== "red" || p.includes("stethoscope")), step);
    // What the server was offered (the publish connection's local description).
    result.checks.kiosk_offer = await kiosk.evaluate(() => {
      const sdp = window.cabine.session.pub.localDescription.sdp;
      return {
        simulcast: (sdp.match(/^a=simulcast:.*$/gm) || []),
        rids: (sdp.match(/^a=rid:\S+ send.*$/gm) || []).length,
        red: /a=rtpmap:\d+ red\/48000\/2/i.test(sdp),
      };
    });
    log(`kiosk offer: ${JSON.stringify(result.checks.kiosk_offer)}`);

    if (mode === "simulcast") {
      if (!result.checks.kiosk_offer.simulcast.some((l) => /^a=simulcast:send q;h;f$/.test(l))) {
        throw new Error(`the kiosk page's offer carries no three-layer simulcast: ${JSON.stringify(result.checks.kiosk_offer)}`);
      }
      const phase = env("PHASE_FILE");
      result.stage = "doctor";
      const doctor = await open(`/consult/${room}#token=${encodeURIComponent(env("DOCTOR_TOKEN"))}`, "doctor");
      result.stage = "top";
      const top = await until(doctor, "top_layer", roomCamera, (v) => v && v.width >= 640 && v.frames > 30, step * 2);
      writeFileSync(phase, "top");
      // The link shrinks: a smaller picture, never a frozen one. Each sample's frames must
      // have risen since the previous one a few seconds ago.
      result.stage = "lower";
      let last = top;
      let lastRise = Date.now();
      let lowest = top.width;
      const deadline = Date.now() + step * 2;
      let low = null;
      for (;;) {
        const v = await doctor.evaluate(roomCamera);
        if (v.frames > last.frames) lastRise = Date.now();
        if (Date.now() - lastRise > 5000) throw new Error(`room camera paused under the shrunk link: ${JSON.stringify(v)}`);
        lowest = Math.min(lowest, v.width || lowest);
        last = v;
        if (v.width > 0 && v.width < top.width) {
          low = v;
          break;
        }
        if (Date.now() > deadline) throw new Error(`the frame width never dropped under the shrunk link; last ${JSON.stringify(v)}`);
        await sleep(250);
      }
      result.checks.lower_layer = low;
      log(`lower layer: ${JSON.stringify(low)}`);
      // Frames keep coming on the lower layer.
      await until(doctor, "frames_on_lower_layer", roomCamera, (v) => v.frames > low.frames + 20, step);
      writeFileSync(phase, "low");
      result.stage = "recover";
      await until(doctor, "top_again", roomCamera, (v) => v.width >= top.width, step * 2);
      result.stage = "done";
      finish(true, `top ${top.width}px, then ${low.width}px under the shrunk link (frames kept rising), then ${top.width}px again`);
      return 0;
    }

    // MODE=red
    if (!result.checks.kiosk_offer.red) throw new Error("the kiosk page's offer has no red/48000/2");
    result.stage = "doctors";
    const withRed = await open(`/consult/${room}#token=${encodeURIComponent(env("DOCTOR_TOKEN"))}`, "dr-red");
    const plain = await context.newPage();
    plain.on("console", (m) => consoleLines.push(`dr-plain ${m.type()}: ${m.text()}`));
    // This doctor's browser answers without RED: the server must send it plain Opus.
    await plain.addInitScript(() => {
      const create = RTCPeerConnection.prototype.createAnswer;
      RTCPeerConnection.prototype.createAnswer = async function (...args) {
        const a = await create.apply(this, args);
        const lines = a.sdp.split("\r\n");
        const red = new Set(lines.map((l) => /^a=rtpmap:(\d+) red\//i.exec(l)).filter(Boolean).map((m) => m[1]));
        const sdp = lines
          .filter((l) => ![...red].some((pt) => l.startsWith(`a=rtpmap:${pt} `) || l.startsWith(`a=fmtp:${pt} `) || l.startsWith(`a=rtcp-fb:${pt} `)))
          .map((l) => (l.startsWith("m=audio") ? l.split(" ").filter((x, i) => i < 3 || !red.has(x)).join(" ") : l))
          .join("\r\n");
        return { type: a.type, sdp };
      };
    });
    await plain.goto(`${base}/consult/${room}#token=${encodeURIComponent(env("DOCTOR2_TOKEN"))}`);
    const packets = Number(process.env.RED_PACKETS || 1500);
    // Past the start (jitter buffer settling), then a window of `packets` packets on both.
    result.stage = "warmup";
    const a0 = await until(withRed, "red_warm", stethoscope, (s) => s && s.received > 200, step);
    const b0 = await until(plain, "plain_warm", stethoscope, (s) => s && s.received > 200, step);
    result.stage = "window";
    const a1 = await until(withRed, "red_window", stethoscope, (s) => s.received > a0.received + packets, step * 2);
    const b1 = await until(plain, "plain_window", stethoscope, (s) => s.received > b0.received + packets, step * 2);
    const measure = (s0, s1) => {
      const lost = s1.lost - s0.lost;
      const got = s1.received - s0.received;
      const loss = lost / (lost + got);
      const concealment = (s1.concealed - s0.concealed) / Math.max(1, s1.samples - s0.samples);
      return { codec: s1.codec, red_in_answer: s1.red_in_answer, packets: got, lost, loss, concealment,
        recovered: loss > 0 ? 1 - concealment / loss : 0 };
    };
    const red = measure(a0, a1);
    const noRed = measure(b0, b1);
    result.checks.red = red;
    result.checks.no_red = noRed;
    log(`with RED: ${JSON.stringify(red)}; without: ${JSON.stringify(noRed)}`);
    result.stage = "assert";
    // Negotiated: the answer's m-line of the stethoscope keeps red/48000/2 (getStats' codec is
    // reported as is: Chromium names the primary codec or RED depending on its version).
    if (!red.red_in_answer) throw new Error(`RED not negotiated on the stethoscope: ${JSON.stringify(red)}`);
    if (noRed.red_in_answer || /red/i.test(noRed.codec)) throw new Error(`the page that refused RED got it: ${JSON.stringify(noRed)}`);
    if (!(red.loss >= 0.02 && noRed.loss >= 0.02)) throw new Error("the downlinks lost less than 2 %: the relay's loss did not apply");
    if (!(noRed.concealment >= 0.5 * noRed.loss)) throw new Error(`without RED the loss was not concealed as expected: ${JSON.stringify(noRed)}`);
    // Concealment also counts jitter-buffer underruns of a starved machine, which hit both
    // pages alike: RED must conceal under half of what the control does, and recover at least
    // half of its own loss (96-97 % measured on an idle machine).
    if (!(red.concealment <= 0.5 * noRed.concealment)) throw new Error(`RED concealed ${red.concealment}, the page without ${noRed.concealment}`);
    if (!(red.recovered >= 0.5)) throw new Error(`RED recovered less than half of the loss: ${JSON.stringify(red)}`);
    result.stage = "done";
    finish(true, `stethoscope under ${(red.loss * 100).toFixed(1)} % loss: ${(red.concealment * 100).toFixed(2)} % concealed with RED `
      + `(${(red.recovered * 100).toFixed(0)} % of the loss recovered), ${(noRed.concealment * 100).toFixed(2)} % without`);
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
