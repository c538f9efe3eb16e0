// The doctor's consultation page: /consult/{room}#token=<doctor token>.
// The token stays in the URL fragment (never sent in a request line or a Referer; the server
// logs routes, not URLs). Everything the page shows is exposed on `window.cabine` for tests.

import { Session, fragmentParams, roomFromPath, quality } from "/app/session.js";

const $ = (id) => document.getElementById(id);
const room = roomFromPath();
const { token, params } = fragmentParams();
history.replaceState(null, "", location.pathname); // The token leaves the address bar.
$("room").textContent = room;

const state = {
  vitals: {}, // tile id -> {value, unit, time, seq}
  bpReadings: 0,
  ecgDraws: 0,
  plethDraws: 0,
  waveSamples: { ecg: 0, pleth: 0 },
  stethoscope: false,
  stethFrames: 0,
  renegotiations: 0,
  resumes: 0,
  pageId: Math.random().toString(36).slice(2),
  kiosk: "absent",
  messages: [],
  snapshot: null, // { what, width, height } of the still shown
  stills: [], // details of the completed take_snapshot commands
  channels: new Map(), // `${source}/${channel_id}` -> ChannelDecl
  quality: null,
};
// `#…&relay=1`: TURN relays only (what a network that lets nothing else through leaves).
const iceTransportPolicy = params.get("relay") === "1" ? "relay" : "all";
const session = new Session({ room, token, subscribe: true, iceTransportPolicy });
window.cabine = { session, state };

function banner(text, level = "") {
  $("banner").textContent = text;
  $("banner").className = "banner " + level;
  state.messages.push(text);
}

// --- media -------------------------------------------------------------------------------------
const kioskTracks = new Map(); // mid -> info, for tracks not from us
session.addEventListener("track_added", (e) => {
  const t = e.detail;
  kioskTracks.set(t.mid, t);
  if (state.kiosk !== "present") {
    banner(state.kiosk === "absent" ? `${t.from} joined` : `${t.from} reconnected`, "");
    state.kiosk = "present";
  }
});
session.addEventListener("track_removed", (e) => {
  const t = e.detail;
  kioskTracks.delete(t.mid);
  if (t.class === "device-camera") $("device").classList.add("hidden");
  if (t.class === "stethoscope") setStethoscope(null);
  if (![...kioskTracks.values()].some((x) => x.from === t.from)) {
    state.kiosk = "dropped";
    banner(`${t.from} dropped — waiting for it to reconnect…`, "bad");
    $("no-kiosk").classList.remove("hidden");
  }
});
session.addEventListener("track", (e) => {
  const { track, info } = e.detail;
  const stream = new MediaStream([track]);
  const label = info ? info.label : "";
  const cls = info ? info.class : track.kind;
  if (cls === "stethoscope") {
    setStethoscope(stream);
  } else if (cls === "device-camera") {
    $("device-camera").srcObject = stream;
    $("device-label").textContent = label === "device-camera" ? "" : `(${label})`;
    $("device").classList.remove("hidden");
  } else if (track.kind === "video") {
    $("room-camera").srcObject = stream;
    $("no-kiosk").classList.add("hidden");
  } else {
    // Other audio (the kiosk's microphone): one element per track.
    const a = document.createElement("audio");
    a.autoplay = true;
    a.srcObject = stream;
    a.dataset.label = label;
    document.querySelector("footer").append(a);
  }
});
session.addEventListener("renegotiated", () => { state.renegotiations++; });
session.addEventListener("signalling", (e) => {
  if (!e.detail.up) banner("Connection to the server lost — reconnecting (the consultation continues)…", "warn");
  else if (e.detail.resumed) {
    state.resumes++;
    banner("Reconnected to the server", "");
  }
});
session.addEventListener("state", (e) => {
  if (e.detail.state === "live" && e.detail.why === "joined") banner(state.kiosk === "present" ? "In consultation" : "Waiting for the kiosk…");
});
session.addEventListener("participant", (e) => {
  const p = e.detail;
  if (p.event === "disconnected") banner(`${p.identity} lost its connection — waiting…`, "warn");
  if (p.event === "resumed") banner(`${p.identity} is back`);
  if (p.event === "left") banner(`${p.identity} left`);
});
session.addEventListener("error", (e) => {
  console.warn("cabine:", e.detail.code || "", e.detail.message);
  if (e.detail.code === "redirect_loop" || e.detail.code === "redirect_refused") banner(e.detail.message, "warn");
});

// --- own camera and microphone (voice processing on) --------------------------------------------
let local;
async function startLocal() {
  try {
    local = await navigator.mediaDevices.getUserMedia({
      video: { width: 640, height: 480 },
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
  } catch (err) {
    banner(`Camera/microphone unavailable: ${err.message}`, "warn");
    return;
  }
  $("self").srcObject = local;
  for (const t of local.getTracks()) {
    await session.addTrack(t, t.kind === "video" ? "doctor-camera" : "doctor-microphone");
  }
}
$("mute").onclick = () => {
  const a = local && local.getAudioTracks()[0];
  if (!a) return;
  a.enabled = !a.enabled;
  $("mute").textContent = a.enabled ? "Mute" : "Unmute";
  $("mute").classList.toggle("on", !a.enabled);
};
$("camera").onclick = () => {
  const v = local && local.getVideoTracks()[0];
  if (!v) return;
  v.enabled = !v.enabled;
  $("camera").textContent = v.enabled ? "Camera off" : "Camera on";
  $("camera").classList.toggle("on", !v.enabled);
};
$("leave").onclick = () => {
  session.leave();
  if (local) local.getTracks().forEach((t) => t.stop());
  banner("You left the consultation");
};
$("enlarge").onclick = () => {
  const on = document.querySelector(".stage").classList.toggle("enlarged");
  $("enlarge").textContent = on ? "Reduce" : "Enlarge";
};

// --- stethoscope: WebAudio, never processed ------------------------------------------------------
let audioCtx, stethGain, stethAnalyser, stethEl;
function setStethoscope(stream) {
  state.stethoscope = !!stream;
  $("listen").disabled = !stream;
  $("steth-state").textContent = stream ? "received" : "no stethoscope";
  if (!stream) return;
  // Chrome only feeds a remote stream to WebAudio while a media element plays it.
  stethEl = stethEl || new Audio();
  stethEl.muted = true;
  stethEl.srcObject = stream;
  stethEl.play().catch(() => {});
  audioCtx = audioCtx || new AudioContext({ latencyHint: "interactive" });
  const src = audioCtx.createMediaStreamSource(stream);
  stethAnalyser = audioCtx.createAnalyser();
  stethAnalyser.fftSize = 2048;
  stethAnalyser.smoothingTimeConstant = 0.2;
  stethGain = stethGain || audioCtx.createGain();
  stethGain.gain.value = 0; // Silent until "Listen".
  src.connect(stethAnalyser);
  src.connect(stethGain);
  stethGain.connect(audioCtx.destination);
}
let listening = false;
$("listen").onclick = async () => {
  if (!audioCtx) return;
  await audioCtx.resume();
  listening = !listening;
  stethGain.gain.value = listening ? Number($("volume").value) : 0;
  $("listen").textContent = listening ? "Stop listening" : "Listen";
  $("listen").classList.toggle("on", listening);
};
$("volume").oninput = () => { if (listening && stethGain) stethGain.gain.value = Number($("volume").value); };

function drawStethoscope() {
  if (!stethAnalyser) return;
  const wave = $("steth-wave"), spec = $("steth-spec");
  const w = wave.getContext("2d");
  const data = new Float32Array(stethAnalyser.fftSize);
  stethAnalyser.getFloatTimeDomainData(data);
  w.fillStyle = "#0d1a1c"; w.fillRect(0, 0, wave.width, wave.height);
  w.strokeStyle = "#7fd1c7"; w.beginPath();
  for (let i = 0; i < data.length; i++) {
    const x = (i / data.length) * wave.width, y = wave.height / 2 - data[i] * wave.height * 2;
    i ? w.lineTo(x, y) : w.moveTo(x, y);
  }
  w.stroke();
  // Spectrogram, 0–1000 Hz (heart and lung sounds), scrolling left.
  const s = spec.getContext("2d");
  s.drawImage(spec, -2, 0);
  const bins = new Uint8Array(stethAnalyser.frequencyBinCount);
  stethAnalyser.getByteFrequencyData(bins);
  const hz = audioCtx.sampleRate / stethAnalyser.fftSize;
  const top = Math.min(bins.length, Math.ceil(1000 / hz));
  for (let y = 0; y < spec.height; y++) {
    const v = bins[Math.floor(((spec.height - y) / spec.height) * top)] || 0;
    s.fillStyle = `rgb(${v},${Math.floor(v * 0.8)},${Math.floor(60 + v / 2)})`;
    s.fillRect(spec.width - 2, y, 2, 1);
  }
  state.stethFrames++;
}

// --- telemetry ---------------------------------------------------------------------------------
const TILE = {
  "59408-5": "spo2", "2708-6": "spo2", "8867-4": "pulse", "8889-8": "pulse",
  "8310-5": "temp", "8480-6": "bp-sys", "8462-4": "bp-dia", "29463-7": "weight",
};
let serverOffsetMs = 0; // server clock − local clock, from server_time_us
const waves = { ecg: [], pleth: [] }; // [{t_us, v}]
const waveRate = { ecg: 0, pleth: 0 };
let requestId = 0;
const pending = new Map(); // request_id → "bp" | "snapshot"
const commands = new Map(); // command_id → "bp" | "snapshot"

session.addEventListener("commands_open", () => session.sendCommand({ type: "sync" }));
session.addEventListener("telemetry", (e) => {
  let m;
  try { m = JSON.parse(e.detail.data); } catch { return; }
  if (m.sync) {
    for (const c of m.sync.channels || []) onDelivered(c);
    for (const l of m.sync.latest || []) onDelivered(l);
  } else if (m.command_sent) {
    const what = pending.get(m.command_sent.request_id);
    if (what) commands.set(m.command_sent.command_id, what);
    if (what === "snapshot") $("snapshot-state").textContent = "taking a still…";
    else $("bp-state").textContent = "measuring…";
  } else if (m.command_refused) {
    const what = pending.get(m.command_refused.request_id);
    $(what === "snapshot" ? "snapshot-state" : "bp-state").textContent = `refused: ${m.command_refused.reason}`;
  } else if (m.frame) {
    onDelivered(m);
  }
});

function onDelivered(d) {
  if (!d.frame) return;
  if (d.server_time_us) serverOffsetMs = d.server_time_us / 1000 - Date.now();
  const key = `${d.source}/${d.channel_id}`;
  const f = d.frame;
  if (f.channel) {
    state.channels.set(key, f.channel);
    const cmds = f.channel.commands || [];
    if (cmds.includes("start_measurement")) $("measure-bp").disabled = false;
  } else if (f.measurement) {
    const at = new Date((d.aligned_time_us || d.server_time_us) / 1000);
    let sys, dia;
    for (const v of f.measurement.values || []) {
      const tile = TILE[v.loinc];
      if (tile === "bp-sys") sys = v.value;
      else if (tile === "bp-dia") dia = v.value;
      else if (tile) setTile(tile, fmt(tile, v.value), at, f.measurement.seq);
    }
    if (sys !== undefined && dia !== undefined) {
      setTile("bp", `${Math.round(sys)}/${Math.round(dia)}`, at, f.measurement.seq);
      state.bpReadings++;
      $("bp-state").textContent = "";
    }
  } else if (f.waveform) {
    const decl = state.channels.get(key) || {};
    const kind = waveKind(decl, f.waveform);
    if (!kind) return;
    const w = f.waveform;
    const rate = w.sample_rate_hz || decl.sample_rate_hz || 1;
    const leads = Math.max(1, w.leads || 1);
    waveRate[kind] = rate;
    // Aligned time of the first sample: the kiosk capture time mapped to the server clock.
    const shift = (d.aligned_time_us || 0) - (d.capture_time_us || 0);
    const t0 = (w.first_sample_time_us || d.capture_time_us || 0) + shift;
    const buf = waves[kind];
    const n = Math.floor((w.samples || []).length / leads);
    for (let i = 0; i < n; i++) {
      buf.push({ t: t0 + (i * 1e6) / rate, v: w.samples[i * leads] * (w.scale || 1) + (w.offset || 0) });
    }
    state.waveSamples[kind] += n;
    while (buf.length && buf[0].t < buf[buf.length - 1].t - 10e6) buf.shift();
  } else if (f.command_result) {
    const r = f.command_result;
    const what = commands.get(r.command_id);
    const el = $(what === "snapshot" ? "snapshot-state" : "bp-state");
    if (r.outcome === "failed" || r.outcome === "rejected" || r.outcome === "unknown_command") el.textContent = `failed: ${r.detail}`;
    else if (what === "snapshot" && r.outcome === "completed") state.stills.push(r.detail);
  } else if (f.blob) {
    onBlob(f.blob);
  } else if (f.left) {
    banner(`${d.source}'s devices disconnected`, "warn");
  }
}

function waveKind(decl, w) {
  const dk = decl.device_kind || "";
  const label = (decl.label || "").toLowerCase();
  if (dk === "ecg" || label.includes("ecg")) return "ecg";
  if (dk === "pulse_oximeter" || label.includes("pleth")) return "pleth";
  const rate = w.sample_rate_hz || 0;
  return rate >= 200 ? "ecg" : rate > 0 ? "pleth" : null;
}

function fmt(tile, v) {
  if (tile === "temp") return v.toFixed(1);
  if (tile === "weight") return v.toFixed(1);
  return String(Math.round(v));
}

function setTile(id, text, at, seq) {
  const el = $("tile-" + id);
  el.querySelector(".value").textContent = text;
  el.querySelector(".time").textContent = at.toLocaleTimeString();
  el.classList.add("fresh");
  setTimeout(() => el.classList.remove("fresh"), 1500);
  state.vitals[id] = { value: text, time: at.toISOString(), seq };
}

$("measure-bp").onclick = () => {
  const entry = [...state.channels.entries()].find(([, c]) => (c.commands || []).includes("start_measurement"));
  if (!entry) return;
  const [key, c] = entry;
  const id = ++requestId;
  pending.set(id, "bp");
  const ok = session.sendCommand({ type: "command", request_id: id, channel_id: c.channel_id ?? Number(key.split("/")[1]), name: "start_measurement", kiosk: key.split("/")[0] });
  $("bp-state").textContent = ok ? "requested…" : "telemetry channel not open";
};

// Snapshot: ask the kiosk for a full-resolution still when a device offers one; otherwise grab
// the current frame of the device camera.
const blobs = new Map();
$("snapshot").onclick = () => {
  const entry = [...state.channels.entries()].find(([, c]) => (c.commands || []).includes("take_snapshot"));
  if (entry) {
    const [key, c] = entry;
    const id = ++requestId;
    pending.set(id, "snapshot");
    const ok = session.sendCommand({ type: "command", request_id: id, channel_id: c.channel_id ?? Number(key.split("/")[1]), name: "take_snapshot", kiosk: key.split("/")[0] });
    $("snapshot-state").textContent = ok ? "asking the kiosk for a still…" : "telemetry channel not open";
    return;
  }
  const v = $("device-camera");
  if (!v.videoWidth) return;
  const c = document.createElement("canvas");
  c.width = v.videoWidth; c.height = v.videoHeight;
  c.getContext("2d").drawImage(v, 0, 0);
  showStill(c.toDataURL("image/png"), `frame ${v.videoWidth}×${v.videoHeight} (the kiosk offers no still)`);
};
const mime = new Map(); // blob_id → MIME type (sent with the first chunk only)
function onBlob(b) {
  if (b.mime) mime.set(b.blob_id, b.mime);
  const parts = blobs.get(b.blob_id) || [];
  parts[b.seq] = b.data;
  blobs.set(b.blob_id, parts);
  if (b.last) {
    blobs.delete(b.blob_id);
    const bytes = parts.map((p) => Uint8Array.from(atob(p), (ch) => ch.charCodeAt(0)));
    showStill(URL.createObjectURL(new Blob(bytes, { type: mime.get(b.blob_id) || "image/jpeg" })), "full resolution still");
    mime.delete(b.blob_id);
  }
}
function showStill(src, what) {
  const img = $("still");
  img.onload = () => {
    const size = `${img.naturalWidth}×${img.naturalHeight}`;
    state.snapshot = { what, width: img.naturalWidth, height: img.naturalHeight };
    $("snapshot-state").textContent = "";
    $("still-caption").textContent = `Snapshot ${new Date().toLocaleTimeString()}: ${what}, ${size}`;
    $("still-box").classList.remove("hidden");
    if (src.startsWith("blob:")) URL.revokeObjectURL(src);
  };
  img.onerror = () => { $("snapshot-state").textContent = "the still could not be shown"; };
  img.src = src;
}
// Click the still to look at it at full size; click again (or Escape) to close.
$("still").onclick = () => $("still-box").classList.toggle("full");
document.addEventListener("keydown", (e) => { if (e.key === "Escape") $("still-box").classList.remove("full"); });

// --- drawing: waveforms at their sample rate, aligned with the video ------------------------------
function videoDelayMs() {
  // What the video shows now was captured about this long ago (jitter buffer + transport).
  const q = state.quality;
  return 150 + (q && q.rtt ? q.rtt / 2 : 0);
}
function drawWave(kind, canvas, color) {
  const buf = waves[kind];
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#0d1a1c"; ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (buf.length < 2) return false;
  const span = 5e6; // 5 s across the canvas
  const end = (Date.now() + serverOffsetMs - videoDelayMs()) * 1000;
  const start = end - span;
  let lo = Infinity, hi = -Infinity;
  for (const p of buf) if (p.t >= start) { lo = Math.min(lo, p.v); hi = Math.max(hi, p.v); }
  if (!isFinite(lo)) return false;
  const range = hi - lo || 1;
  ctx.strokeStyle = color; ctx.lineWidth = 1.5; ctx.beginPath();
  let first = true;
  for (const p of buf) {
    if (p.t < start || p.t > end) continue;
    const x = ((p.t - start) / span) * canvas.width;
    const y = canvas.height - 4 - ((p.v - lo) / range) * (canvas.height - 8);
    first ? ctx.moveTo(x, y) : ctx.lineTo(x, y);
    first = false;
  }
  ctx.stroke();
  return !first;
}
function frame() {
  drawStethoscope();
  if (drawWave("ecg", $("ecg"), "#8fe388")) state.ecgDraws++;
  if (drawWave("pleth", $("pleth"), "#7fb8ff")) state.plethDraws++;
  $("ecg-rate").textContent = waveRate.ecg ? `${waveRate.ecg} Hz` : "";
  $("pleth-rate").textContent = waveRate.pleth ? `${waveRate.pleth} Hz` : "";
  requestAnimationFrame(frame);
}
requestAnimationFrame(frame);
// Headless or hidden tabs throttle requestAnimationFrame: keep the traces drawn anyway.
setInterval(() => { if (document.hidden) frame(); }, 250);

// --- connection quality ------------------------------------------------------------------------
setInterval(async () => {
  const q = await quality(session.sub, state.quality);
  if (!q) return;
  state.quality = q;
  const level = q.loss > 0.05 || (q.rtt ?? 0) > 400 ? "poor" : q.loss > 0.01 || (q.rtt ?? 0) > 150 ? "fair" : "good";
  $("quality").className = "quality " + level;
  $("quality").textContent = `RTT ${q.rtt == null ? "—" : Math.round(q.rtt) + " ms"} · loss ${(q.loss * 100).toFixed(1)} % · ${Math.round(q.kbps)} kbit/s`;
}, 1000);

if (!token) banner("No token: open this page with #token=<doctor token>", "bad");
else {
  session.start();
  startLocal();
}
