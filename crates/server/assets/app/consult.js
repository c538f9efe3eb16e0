// The doctor's consultation page: /consult/{room}#token=<doctor token>.
// The token stays in the URL fragment (never sent in a request line or a Referer; the server
// logs routes, not URLs). Everything the page shows is exposed on `window.cabine` for tests.

import { Session, fragmentParams, forgetFragment, roomFromPath, quality, rates, simulcast } from "/app/session.js";

const $ = (id) => document.getElementById(id);
const room = roomFromPath();
const { token, params } = fragmentParams();
history.replaceState(null, "", location.pathname); // The token leaves the address bar.
$("room").textContent = room;

const state = {
  vitals: {}, // tile id -> {value, unit, time, seq}
  measured: [], // "source/epoch/channel/seq" of the measurements shown, in order (the last 2048)
  duplicatesDropped: 0, // measurements delivered again (resent, or by both sessions of a move)
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

// --- what the banner says ------------------------------------------------------------------------
// Two kinds of messages: events ("kiosk-1 joined"), shown until the next one, and conditions
// ("Kiosk video interrupted"), shown while they hold and cleared the moment they stop holding.
// A condition outranks any event; the worst one shows (with how many others there are).
// `state.noticeLog` keeps when each condition was set and cleared (the page's own clock).
const notices = new Map(); // key -> { text, level, set }
let status = { text: "Connecting…", level: "" };
state.noticeLog = [];
function banner(text, level = "") {
  status = { text, level };
  state.messages.push(text);
  showBanner();
}
function notice(key, text, level = "warn") {
  const cur = notices.get(key);
  if (cur && cur.text === text && cur.level === level) return;
  const at = Date.now();
  notices.set(key, { text, level, set: cur ? cur.set : at });
  if (!cur) state.noticeLog.push({ key, text, set: at, cleared: null });
  state.messages.push(text);
  showBanner();
}
function clearNotice(key) {
  if (!notices.delete(key)) return;
  const open = state.noticeLog.filter((n) => n.key === key && n.cleared === null);
  for (const n of open) n.cleared = Date.now();
  showBanner();
}
function showBanner() {
  const rank = { bad: 2, warn: 1, "": 0 };
  let top = null;
  for (const n of notices.values()) if (!top || rank[n.level] > rank[top.level] || (rank[n.level] === rank[top.level] && n.set > top.set)) top = n;
  const shown = top ? { text: notices.size > 1 ? `${top.text} (+${notices.size - 1} more)` : top.text, level: top.level } : status;
  $("banner").textContent = shown.text;
  $("banner").className = "banner " + shown.level;
  $("banner").title = [...notices.values()].map((n) => n.text).join("\n");
  state.notices = [...notices.keys()];
}

// --- media: tiles keyed by participant identity and role -----------------------------------------
// Every remote track belongs to a peer (its publisher's identity, with the role the server gives).
// The stage shows one cabin, `mainKiosk`: the first kiosk seen, for as long as it is in the room
// (it gets the stage back when it reconnects). Any other participant (a second cabin, a
// specialist) gets tiles of its own in the strip below, keyed by identity: a track that arrives
// or leaves changes only its own publisher's tiles.
const peers = new Map(); // identity -> { role, tracks: Map(mid -> info), tile: element|null }
let mainKiosk = null;
state.tiles = {}; // `${identity}/${camera|device-camera}` -> { mid, track, element }
const audios = new Map(); // mid -> audio element (microphones)
let stethMid = null;

function peerOf(info) {
  let p = peers.get(info.from);
  if (!p) {
    p = { role: "", tracks: new Map(), tile: null };
    peers.set(info.from, p);
  }
  if (info.role) p.role = info.role;
  return p;
}
const isKiosk = (p, info) => p.role === "kiosk" || (!p.role && ["room-camera", "device-camera", "stethoscope"].includes(info.label));
function slotOf(info) { return info.class === "device-camera" ? "device-camera" : "camera"; }

session.addEventListener("track_added", (e) => {
  const t = e.detail;
  const p = peerOf(t);
  const had = p.tracks.size > 0;
  p.tracks.set(t.mid, t);
  // The stage goes to a kiosk only if it is free, and never to one that already has strip tiles
  // (its pictures do not jump from one place to another).
  if (isKiosk(p, t) && !p.tile && (mainKiosk === null || !peers.get(mainKiosk)?.tracks.size)) {
    if (mainKiosk !== t.from && mainKiosk !== null) clearNotice(`gone:${mainKiosk}`);
    mainKiosk = t.from;
  }
  if (!had) {
    clearNotice(`gone:${t.from}`);
    banner(p.seen ? `${t.from} reconnected` : `${t.from} joined`);
    p.seen = true;
  }
  state.kiosk = mainKiosk && peers.get(mainKiosk).tracks.size ? "present" : state.kiosk;
  if (mainKiosk === t.from && !state.timerStart) state.timerStart = Date.now();
});
session.addEventListener("track_removed", (e) => {
  const t = e.detail;
  const p = peers.get(t.from);
  if (!p || !p.tracks.delete(t.mid)) return;
  const key = `${t.from}/${slotOf(t)}`;
  const tile = state.tiles[key];
  if (tile && tile.mid === t.mid) {
    // Only this track's picture goes; the publisher's other tiles stay as they are.
    const v = tile.element;
    v.srcObject = null;
    delete state.tiles[key];
    if (t.from === mainKiosk) {
      if (slotOf(t) === "device-camera") $("device").classList.add("hidden");
      else $("no-kiosk").classList.remove("hidden");
    } else v.closest(".peer-video")?.remove();
  }
  const a = audios.get(t.mid);
  if (a) { a.srcObject = null; a.remove(); audios.delete(t.mid); }
  if (t.mid === stethMid) { stethMid = null; setStethoscope(null); }
  lastProgress.delete(t.mid);
  if (p.tracks.size === 0) {
    // The cabin on the stage whose video froze and then dropped: its video is still
    // interrupted until a picture comes back, on whatever tracks it publishes next.
    if (t.from === mainKiosk && notices.has(`frozen:${t.from}`)) p.resuming = true;
    else clearNotice(`frozen:${t.from}`);
    // Another participant gone: what was said about its devices no longer matters here.
    if (t.from !== mainKiosk) clearNotice(`devices:${t.from}`);
    if (p.tile) { p.tile.remove(); p.tile = null; }
    if (t.from === mainKiosk) {
      state.kiosk = "dropped";
      $("no-kiosk").textContent = `${t.from} is not connected`;
      $("no-kiosk").classList.remove("hidden");
      notice(`gone:${t.from}`, `${t.from} dropped — waiting for it to reconnect…`, "bad");
    } else banner(`${t.from} left or lost its connection`, "warn");
  }
});
session.addEventListener("track", (e) => {
  const { track, info, mid } = e.detail;
  const stream = new MediaStream([track]);
  const t = info || { from: "", label: "", class: track.kind, role: "" };
  const p = peerOf(t);
  const label = t.label;
  if (t.class === "stethoscope") {
    if (t.from !== mainKiosk) return; // The stethoscope panel listens to the cabin on the stage.
    stethMid = mid;
    setStethoscope(stream);
  } else if (track.kind === "video") {
    const slot = slotOf(t);
    let v;
    if (t.from === mainKiosk) {
      if (slot === "device-camera") {
        v = $("device-camera");
        $("device-label").textContent = label === "device-camera" ? "" : `(${label})`;
        $("device").classList.remove("hidden");
      } else {
        v = $("room-camera");
        $("no-kiosk").classList.add("hidden");
      }
    } else {
      v = peerVideo(t.from, p, slot, label);
    }
    v.srcObject = stream;
    v.dataset.key = `${t.from}/${slot}`;
    v.dataset.mid = mid;
    state.tiles[`${t.from}/${slot}`] = { mid, track: track.id, element: v, identity: t.from, role: p.role };
  } else {
    // Other audio (a microphone): one element per track, gone with it.
    const a = document.createElement("audio");
    a.autoplay = true;
    a.srcObject = stream;
    a.dataset.label = label;
    a.dataset.from = t.from;
    document.querySelector("footer").append(a);
    audios.set(mid, a);
  }
});
// The strip tile of a participant other than the cabin on the stage, one video per slot.
function peerVideo(identity, p, slot, label) {
  if (!p.tile) {
    p.tile = document.createElement("figure");
    p.tile.className = "peer";
    p.tile.dataset.identity = identity;
    const cap = document.createElement("figcaption");
    cap.className = "label";
    cap.textContent = p.role ? `${identity} (${p.role})` : identity;
    p.tile.append(cap);
    $("peers").append(p.tile);
  }
  let box = p.tile.querySelector(`.peer-video[data-slot="${slot}"]`);
  if (!box) {
    box = document.createElement("div");
    box.className = "peer-video";
    box.dataset.slot = slot;
    const v = document.createElement("video");
    v.autoplay = true; v.playsInline = true; v.muted = true;
    v.title = label;
    box.append(v);
    p.tile.insertBefore(box, p.tile.querySelector("figcaption"));
  }
  return box.querySelector("video");
}
session.addEventListener("renegotiated", () => { state.renegotiations++; });
session.addEventListener("signalling", (e) => {
  if (!e.detail.up) notice("signalling", "Connection to the server lost — reconnecting (the consultation continues)…", "warn");
  else {
    clearNotice("signalling");
    if (e.detail.resumed) {
      state.resumes++;
      banner("Reconnected to the server", "");
    }
  }
});
session.addEventListener("state", (e) => {
  if (e.detail.state === "live" && e.detail.why === "joined") banner(state.kiosk === "present" ? "In consultation" : "Waiting for the kiosk…");
});
session.addEventListener("participant", (e) => {
  const p = e.detail;
  if (p.event === "disconnected") notice(`disconnected:${p.identity}`, `${p.identity} lost its connection — waiting…`, "warn");
  else clearNotice(`disconnected:${p.identity}`);
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
    if (t.kind === "video") await session.addTrack(t, "doctor-camera", undefined, simulcast(3));
    else await session.addTrack(t, "doctor-microphone");
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
  clearInterval(timer);
  forgetFragment();
  banner("You left the consultation");
};
$("enlarge").onclick = () => {
  const on = document.querySelector(".stage").classList.toggle("enlarged");
  $("enlarge").textContent = on ? "Reduce" : "Enlarge";
};

// --- stethoscope: WebAudio, never processed ------------------------------------------------------
let audioCtx, stethGain, stethAnalyser, stethEl;
let stethPeak = 0.005;
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
  // Phonocardiogram: each frame adds a column (the span of the last ~43 ms of sound) at the
  // right, scrolling left with the spectrogram, so beats show as bursts over a few seconds.
  // Automatic gain: heart sounds are quiet, so the trace is scaled to the recent loudest
  // moment (an envelope falling by 1 % per frame), at most ×90 so that silence stays flat.
  let lo = 0, hi = 0;
  for (let i = 0; i < data.length; i++) { lo = Math.min(lo, data[i]); hi = Math.max(hi, data[i]); }
  stethPeak = Math.max(hi, -lo, stethPeak * 0.99, 0.005);
  state.stethScale = 0.45 / stethPeak;
  w.drawImage(wave, -2, 0);
  w.fillStyle = "#0d1a1c"; w.fillRect(wave.width - 2, 0, 2, wave.height);
  const mid = wave.height / 2, k = state.stethScale * wave.height;
  w.fillStyle = "#7fd1c7";
  w.fillRect(wave.width - 2, mid - hi * k, 2, Math.max(1, (hi - lo) * k));
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
const waveRate = { ecg: 0, pleth: 0 }; // sample rates, Hz
// Heart rate shown over each trace: the device's own measurement when it sends one (fresh within
// 15 s), else counted from the trace's peaks.
const deviceRate = { ecg: null, pleth: null }; // { bpm, at }
state.rates = { ecg: null, pleth: null }; // { bpm, source: "device" | "trace" }
let requestId = 0;
const pending = new Map(); // request_id → "bp" | "snapshot"
const commands = new Map(); // command_id → "bp" | "snapshot"

session.addEventListener("commands_open", () => session.sendCommand({ type: "sync" }));
session.addEventListener("telemetry", (e) => {
  let m;
  try { m = JSON.parse(e.detail.data); } catch { return; }
  if (m.sync) {
    for (const c of m.sync.channels || []) onDelivered(c);
    // What the kiosk resent to this node before the page got here (after a move or a node's
    // death), in arrival order; the ones already shown are dropped by their key.
    for (const r of m.sync.recent || []) onDelivered(r);
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

// Measurements shown, by (source, epoch, channel): the last MEASURED_KEPT seqs of each; and, for
// tests and the curious, the keys in order (the last MEASURED_KEPT).
const MEASURED_KEPT = 2048;
const measuredSeqs = new Map();
function firstDelivery(key, seq) {
  let seen = measuredSeqs.get(key);
  if (!seen) { seen = new Set(); measuredSeqs.set(key, seen); }
  if (seen.has(seq)) { state.duplicatesDropped++; return false; }
  seen.add(seq);
  if (seen.size > MEASURED_KEPT) seen.delete(seen.values().next().value);
  state.measured.push(`${key}/${seq}`);
  if (state.measured.length > MEASURED_KEPT) state.measured.shift();
  return true;
}

function onDelivered(d) {
  if (!d.frame) return;
  if (d.server_time_us) serverOffsetMs = d.server_time_us / 1000 - Date.now();
  const key = `${d.source}/${d.channel_id}`;
  const f = d.frame;
  // Anything from the cabin's devices but their goodbye means they are connected again.
  if (!f.left) clearNotice(`devices:${d.source}`);
  if (f.channel) {
    state.channels.set(key, f.channel);
    const cmds = f.channel.commands || [];
    if (cmds.includes("start_measurement")) $("measure-bp").disabled = false;
  } else if (f.measurement) {
    if (!onStage(d.source)) return;
    // Once per (source, epoch, channel, seq): a measurement resent to another node, or
    // delivered by both sessions while the page moves between nodes, is shown once.
    if (!firstDelivery(`${d.source}/${d.epoch || ""}/${d.channel_id}`, f.measurement.seq)) return;
    const at = new Date((d.aligned_time_us || d.server_time_us) / 1000);
    let sys, dia;
    const device = (state.channels.get(key) || {}).device_kind || "";
    for (const v of f.measurement.values || []) {
      // A heart rate measured by the ECG or the oximeter is the rate their trace shows.
      if (v.loinc === "8867-4" && device === "ecg") deviceRate.ecg = { bpm: v.value, at: Date.now() };
      if (v.loinc === "8867-4" && device === "pulse_oximeter") deviceRate.pleth = { bpm: v.value, at: Date.now() };
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
    if (!onStage(d.source)) return;
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
    if (onStage(d.source)) notice(`devices:${d.source}`, `${d.source}'s devices disconnected`, "warn");
    else banner(`${d.source}'s devices disconnected`, "warn");
  }
}

// Vitals, traces and device commands are those of the cabin on the stage (any cabin's until the
// stage has one): a second cabin's devices never mix into them.
function onStage(source) {
  return !mainKiosk || source === mainKiosk;
}
// The first channel of the stage's cabin that offers `command`.
function channelFor(command) {
  return [...state.channels.entries()].find(([key, c]) => onStage(key.split("/")[0]) && (c.commands || []).includes(command));
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
  const entry = channelFor("start_measurement");
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
  const entry = channelFor("take_snapshot");
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
  requestAnimationFrame(frame);
}
requestAnimationFrame(frame);
// Headless or hidden tabs throttle requestAnimationFrame: keep the traces drawn anyway.
setInterval(() => { if (document.hidden) frame(); }, 250);

// --- heart rates over the traces ----------------------------------------------------------------
// Beats counted in the last 8 s of a trace: upward crossings of 60 % of its range, at most one
// per 300 ms (200 bpm); the median interval between them gives the rate.
function traceRate(kind) {
  const buf = waves[kind];
  if (buf.length < 2) return null;
  const end = buf[buf.length - 1].t, start = end - 8e6;
  let lo = Infinity, hi = -Infinity;
  for (const p of buf) if (p.t >= start) { lo = Math.min(lo, p.v); hi = Math.max(hi, p.v); }
  if (!(hi > lo)) return null;
  const level = lo + 0.6 * (hi - lo);
  const beats = [];
  let prev = null;
  for (const p of buf) {
    if (p.t < start) continue;
    if (prev && prev.v < level && p.v >= level && (!beats.length || p.t - beats[beats.length - 1] > 300e3)) beats.push(p.t);
    prev = p;
  }
  if (beats.length < 3) return null;
  const rr = beats.slice(1).map((t, i) => t - beats[i]).sort((a, b) => a - b);
  const bpm = 60e6 / rr[Math.floor(rr.length / 2)];
  return bpm >= 20 && bpm <= 250 ? bpm : null;
}
function showRates() {
  for (const kind of ["ecg", "pleth"]) {
    const dev = deviceRate[kind] && Date.now() - deviceRate[kind].at < 15000 ? deviceRate[kind].bpm : null;
    const traced = dev === null ? traceRate(kind) : null;
    const r = dev !== null ? { bpm: Math.round(dev), source: "device" } : traced !== null ? { bpm: Math.round(traced), source: "trace" } : null;
    state.rates[kind] = r;
    const el = $(kind + "-rate");
    el.textContent = r ? `${r.bpm} bpm (${r.source === "device" ? (kind === "ecg" ? "ECG" : "oximeter") : "counted from the trace"})` : "";
    el.title = waveRate[kind] ? `${waveRate[kind]} samples per second` : "";
  }
}
setInterval(showRates, 1000);

// --- consultation timer --------------------------------------------------------------------------
// From the first media of the cabin on the stage until the doctor leaves.
const timer = setInterval(() => {
  if (!state.timerStart) return;
  const s = Math.floor((Date.now() - state.timerStart) / 1000);
  const hms = [Math.floor(s / 3600), Math.floor(s / 60) % 60, s % 60];
  $("timer").textContent = (hms[0] ? hms[0] + ":" : "") + hms.slice(1).map((n) => String(n).padStart(2, "0")).join(":");
}, 1000);

// --- frozen media and connection quality ---------------------------------------------------------
// Every 250 ms, each received stream's counters: a video stream whose frames decoded stop rising
// for FREEZE_MS is frozen (audio: packets received); so is one that never decoded a frame
// within START_MS, or at all when its participant comes back from an interruption. A
// participant whose video all froze is said to be interrupted at once, and the notice goes as
// soon as one of its video streams moves again. The quality dot follows: never green over
// stale statistics.
const FREEZE_MS = 1500;
const START_MS = 5000;
const lastProgress = new Map(); // mid -> { count, at }
let lastSample = null;
const samples = []; // recent samples for the rates (about 1 s apart)
state.minKbps = null;
let sampling = false; // one getStats at a time, even when one takes longer than the period
setInterval(async () => {
  if (sampling) return;
  sampling = true;
  const pc = session.sub;
  const q = await quality(pc, lastSample).finally(() => { sampling = false; });
  if (!q) return;
  lastSample = q;
  const now = Date.now();
  const byPeer = new Map(); // identity -> { video: n, frozen: n }
  for (const st of q.streams.values()) {
    const info = session.tracks.get(st.mid);
    if (!info) continue;
    const count = st.kind === "video" ? st.frames : st.packets;
    const last = lastProgress.get(st.mid);
    if (!last || count !== last.count) lastProgress.set(st.mid, { count, at: now });
    if (st.kind !== "video") continue;
    const lp = lastProgress.get(st.mid);
    const b = byPeer.get(info.from) || { video: 0, frozen: 0 };
    const p = peers.get(info.from);
    b.video++;
    if (lp.count > 0 ? now - lp.at >= FREEZE_MS : (p && p.resuming) || now - lp.at >= START_MS) b.frozen++;
    else if (lp.count > 0 && p) p.resuming = false;
    byPeer.set(info.from, b);
  }
  let frozen = 0;
  for (const [id, b] of byPeer) {
    const p = peers.get(id);
    const who = p && (p.role === "kiosk" || id === mainKiosk) ? "Kiosk video" : `Video from ${id}`;
    if (b.video > 0 && b.frozen === b.video) {
      frozen++;
      notice(`frozen:${id}`, `${who} interrupted (${id}) — waiting for it…`, "bad");
    } else clearNotice(`frozen:${id}`);
  }
  for (const key of notices.keys()) {
    const id = key.slice(7);
    if (key.startsWith("frozen:") && !byPeer.has(id) && !peers.get(id)?.resuming) clearNotice(key);
  }
  // The rates over about a second (the last sample at least 900 ms old).
  samples.push(q);
  while (samples.length > 1 && (q.at - samples[1].at >= 900 || samples[0].pc !== pc)) samples.shift();
  const older = samples[0];
  if (older === q || q.at - older.at < 900) return;
  const rate = rates(q, older);
  state.quality = { rtt: q.rtt, loss: rate.loss, kbps: rate.kbps, frozen };
  state.minKbps = state.minKbps === null ? rate.kbps : Math.min(state.minKbps, rate.kbps);
  state.qualityUpdates = (state.qualityUpdates || 0) + 1;
  const stalled = frozen > 0 || (session.tracks.size > 0 && rate.packets === 0);
  const level = stalled ? "poor" : rate.loss > 0.05 || (q.rtt ?? 0) > 400 ? "poor" : rate.loss > 0.01 || (q.rtt ?? 0) > 150 ? "fair" : "good";
  $("quality").className = "quality " + level;
  $("quality").textContent = stalled
    ? `No media received · ${Math.round(rate.kbps)} kbit/s`
    : `RTT ${q.rtt == null ? "—" : Math.round(q.rtt) + " ms"} · loss ${(rate.loss * 100).toFixed(1)} % · ${Math.round(rate.kbps)} kbit/s`;
}, 250);

if (!token) banner("No token: open this page with #token=<doctor token>", "bad");
else {
  session.start();
  startLocal();
}
