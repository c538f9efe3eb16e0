// The kiosk page, for cabins that run a browser: /kiosk/{room}#token=<kiosk token>
// [&device=1][&stethoscope=1]. Publishes the room camera and microphone (voice processing on),
// a device camera (otoscope, dermatoscope) that can be switched on mid-consultation, and a
// stethoscope input captured with every processing off; shows the doctor.
//
// The cabin picks its devices in the selectors; the choice is remembered per cabin (the
// token's subject) in localStorage and used by the next consultation, and a change
// mid-consultation replaces the track on its sender (replaceTrack: no renegotiation). A
// stethoscope on the microphone's device is refused: it would send the room microphone twice.

import { Session, fragmentParams, forgetFragment, roomFromPath, quality, simulcast } from "/app/session.js";

const $ = (id) => document.getElementById(id);
const room = roomFromPath();
const { token, params } = fragmentParams();
history.replaceState(null, "", location.pathname);
$("room").textContent = room;

const state = { published: [], doctorVideo: false, messages: [], quality: null, devices: {}, refused: [] };
// `#…&relay=1`: TURN relays only (what a network that lets nothing else through leaves).
const iceTransportPolicy = params.get("relay") === "1" ? "relay" : "all";
const session = new Session({ room, token, subscribe: true, iceTransportPolicy });
window.cabine = { session, state, switchDevice, choose };

function banner(text, level = "") {
  $("banner").textContent = text;
  $("banner").className = "banner " + level;
  state.messages.push(text);
}

const NO_PROCESSING = { echoCancellation: false, noiseSuppression: false, autoGainControl: false, channelCount: 1 };
const VOICE = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
const CAMERA = { width: 640, height: 480 };

// --- devices: chosen, remembered per cabin, switched with replaceTrack --------------------------
// selector id -> what it picks (the key in the remembered choice and in `state.devices`).
const PICKERS = { "room-cam": "roomCamera", "device-cam": "deviceCamera", mic: "microphone", steth: "stethoscope" };
const devicesKey = "cabine:devices:" + tokenSubject(token);
let inputs = []; // enumerateDevices(), refreshed when devices come and go

function tokenSubject(t) {
  try {
    const b64 = t.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(b64)).sub || "cabin";
  } catch (_) {
    return "cabin";
  }
}
function remembered() {
  try { return JSON.parse(localStorage.getItem(devicesKey) || "{}") || {}; } catch (_) { return {}; }
}
function remember(what, deviceId) {
  const r = remembered();
  r[what] = deviceId;
  try { localStorage.setItem(devicesKey, JSON.stringify(r)); } catch (_) { /* storage off: not remembered */ }
}
// The device a capture really uses (a remembered one may be gone).
const usedDevice = (track) => (track && track.getSettings().deviceId) || "";
// Whether two audio inputs are the same device: the same id, or an alias ("default",
// "communications") of the other, which shares its groupId.
function sameDevice(a, b) {
  if (!a || !b) return false;
  if (a === b) return true;
  const info = (id) => inputs.find((d) => d.kind === "audioinput" && d.deviceId === id);
  const alias = (id) => id === "default" || id === "communications";
  const ia = info(a), ib = info(b);
  return !!(ia && ib && (alias(a) || alias(b)) && ia.groupId && ia.groupId === ib.groupId);
}

async function listDevices() {
  inputs = await navigator.mediaDevices.enumerateDevices();
  const fill = (sel, kind) => {
    const keep = sel.value;
    for (const o of [...sel.options]) if (o.value) o.remove();
    for (const d of inputs.filter((x) => x.kind === kind)) {
      const o = document.createElement("option");
      o.value = d.deviceId;
      o.textContent = d.label || d.deviceId.slice(0, 8);
      sel.append(o);
    }
    sel.value = keep;
  };
  fill($("room-cam"), "videoinput");
  fill($("device-cam"), "videoinput");
  fill($("mic"), "audioinput");
  fill($("steth"), "audioinput");
}

// Shows what is in use in the selectors and in `state.devices`.
function showDevices() {
  for (const [sel, what] of Object.entries(PICKERS)) {
    const s = session.sends.find((x) => x.label === labelOf(what));
    const id = s && s.track ? usedDevice(s.track) : "";
    state.devices[what] = id;
    if ($(sel).querySelector(`option[value="${CSS.escape(id)}"]`)) $(sel).value = id;
    else if (!id && sel === "device-cam") $(sel).value = remembered().deviceCamera || "";
    else if (!id && sel === "steth") $(sel).value = "";
  }
}
const labelOf = (what) => ({ roomCamera: "room-camera", deviceCamera: "device-camera", microphone: "microphone", stethoscope: "stethoscope" })[what];

function refuse(message) {
  state.refused.push(message);
  banner(message, "warn");
}

// Puts `track` on the sender of `label` (replaceTrack, no renegotiation), or publishes it when
// nothing was published under that label yet; the old track is stopped.
async function useTrack(label, track, encodings) {
  const s = session.sends.find((x) => x.label === label);
  if (!s) {
    await session.addTrack(track, label, undefined, encodings);
    return;
  }
  const old = s.track;
  if (s.transceiver) await s.transceiver.sender.replaceTrack(track);
  s.track = track;
  if (old && old !== track) old.stop();
}

// The stethoscope to capture at start: the remembered one, else (with `stethoscope=1`) the
// first input that is not the microphone's device.
function stethoscopeChoice(micId) {
  const wanted = remembered().stethoscope;
  if (wanted && inputs.some((d) => d.kind === "audioinput" && d.deviceId === wanted)) return wanted;
  if (params.get("stethoscope") !== "1") return "";
  const other = inputs.find((d) => d.kind === "audioinput" && !sameDevice(d.deviceId, micId)
    && d.deviceId !== "default" && d.deviceId !== "communications");
  return other ? other.deviceId : "";
}

async function captureStethoscope(deviceId) {
  const s = await navigator.mediaDevices.getUserMedia({ audio: { ...NO_PROCESSING, deviceId: { exact: deviceId } } });
  const t = s.getAudioTracks()[0];
  t.contentHint = "music";
  return t;
}

async function start() {
  const r = remembered();
  // The remembered devices exactly (an `ideal` device loses to the size constraints), else the
  // defaults when one of them is gone.
  const cam = await navigator.mediaDevices.getUserMedia({
    video: r.roomCamera ? { ...CAMERA, deviceId: { exact: r.roomCamera } } : CAMERA,
    audio: r.microphone ? { ...VOICE, deviceId: { exact: r.microphone } } : VOICE,
  }).catch(() => navigator.mediaDevices.getUserMedia({ video: CAMERA, audio: VOICE }));
  await listDevices();
  $("room-preview").srcObject = cam;
  await session.addTrack(cam.getVideoTracks()[0], "room-camera", undefined, simulcast(3));
  await session.addTrack(cam.getAudioTracks()[0], "microphone");
  const micId = usedDevice(cam.getAudioTracks()[0]);
  const steth = stethoscopeChoice(micId);
  if (steth && sameDevice(steth, micId)) {
    refuse("No stethoscope: the chosen input is the microphone's device");
  } else if (steth) {
    await session.addTrack(await captureStethoscope(steth), "stethoscope");
  } else if (params.get("stethoscope") === "1") {
    refuse("No stethoscope: the only audio input is the microphone");
  }
  if (params.get("device") === "1") await switchDevice();
  showDevices();
  session.start();
}

let deviceStream = null;
async function switchDevice() {
  if (deviceStream) return;
  const id = $("device-cam").value || remembered().deviceCamera;
  deviceStream = await navigator.mediaDevices.getUserMedia({ video: id ? { ...CAMERA, deviceId: { exact: id } } : CAMERA })
    .catch(() => navigator.mediaDevices.getUserMedia({ video: CAMERA }));
  $("device-preview").srcObject = deviceStream;
  $("device-toggle").disabled = true;
  // A new m-line on the publish connection: the server renegotiates the doctor's side.
  await session.addTrack(deviceStream.getVideoTracks()[0], "device-camera", undefined, simulcast(2));
  showDevices();
}
$("device-toggle").onclick = () => switchDevice().catch((e) => banner(e.message, "bad"));

// A selector changed: capture the new device, check it, replace the track, remember it.
async function choose(sel) {
  const what = PICKERS[sel];
  const id = $(sel).value;
  const current = (label) => { const s = session.sends.find((x) => x.label === label); return s && s.track ? usedDevice(s.track) : ""; };
  if (what === "stethoscope" || what === "microphone") {
    const other = what === "stethoscope" ? current("microphone") : current("stethoscope");
    if (id && sameDevice(id, other)) {
      refuse(what === "stethoscope"
        ? "Refused: the stethoscope cannot be the microphone's device"
        : "Refused: the microphone cannot be the stethoscope's device");
      showDevices();
      return;
    }
  }
  if (what === "stethoscope") {
    if (id) await useTrack("stethoscope", await captureStethoscope(id));
    else {
      const s = session.sends.find((x) => x.label === "stethoscope");
      if (s && s.transceiver) await s.transceiver.sender.replaceTrack(null);
      if (s && s.track) { s.track.stop(); s.track = null; }
    }
  } else if (what === "microphone") {
    const s = await navigator.mediaDevices.getUserMedia({ audio: { ...VOICE, deviceId: { exact: id } } });
    await useTrack("microphone", s.getAudioTracks()[0]);
  } else if (what === "roomCamera") {
    const s = await navigator.mediaDevices.getUserMedia({ video: { ...CAMERA, deviceId: { exact: id } } });
    await useTrack("room-camera", s.getVideoTracks()[0], simulcast(3));
    $("room-preview").srcObject = s;
  } else if (what === "deviceCamera" && deviceStream) {
    if (!id) return; // Switching the device camera off is the doctor's or the leave button's.
    const s = await navigator.mediaDevices.getUserMedia({ video: { ...CAMERA, deviceId: { exact: id } } });
    await useTrack("device-camera", s.getVideoTracks()[0], simulcast(2));
    deviceStream = s;
    $("device-preview").srcObject = s;
  }
  remember(what, id);
  showDevices();
}
for (const sel of Object.keys(PICKERS)) {
  $(sel).onchange = () => choose(sel).catch((e) => { banner(`Cannot use that device: ${e.message}`, "bad"); showDevices(); });
}
navigator.mediaDevices.addEventListener("devicechange", () => listDevices().then(showDevices).catch(() => {}));
$("leave").onclick = () => { session.leave(); forgetFragment(); banner("Left"); };

session.addEventListener("published", (e) => { state.published = e.detail.tracks.map((t) => t.label); banner("Live: " + state.published.join(", ")); });
// Who is who, by identity: roles from the tracks (`role`) and from signalling's participants.
const roles = new Map(); // identity -> role
const roleOf = (info) => (info && (info.role || roles.get(info.from))) || "";
// The "Doctor" pane shows a doctor's camera only (never another cabin's cameras), keyed by the
// track's m-line: another track ending does not blank it.
let doctorMid = null;
const voices = new Map(); // mid -> audio element (the doctor, an assistant, an interpreter)
session.addEventListener("track", (e) => {
  const { track, info, mid } = e.detail;
  const role = roleOf(info);
  if (role === "kiosk") return; // Another cabin in the room: not for this one to show or play.
  if (track.kind === "video") {
    if (role !== "doctor") return;
    $("doctor").srcObject = new MediaStream([track]);
    $("no-doctor").classList.add("hidden");
    doctorMid = mid;
    state.doctorVideo = true;
    state.doctor = info ? info.from : "";
  } else {
    const a = new Audio();
    a.autoplay = true;
    a.srcObject = new MediaStream([track]);
    voices.set(mid, a);
  }
});
session.addEventListener("track_removed", (e) => {
  const t = e.detail;
  const a = voices.get(t.mid);
  if (a) { a.srcObject = null; voices.delete(t.mid); }
  if (t.mid === doctorMid) {
    doctorMid = null;
    state.doctorVideo = false;
    $("doctor").srcObject = null;
    $("no-doctor").classList.remove("hidden");
    banner("The doctor's video stopped", "warn");
  }
});
session.addEventListener("error", (e) => {
  if (e.detail.code === "redirect_loop" || e.detail.code === "redirect_refused") banner(e.detail.message, "warn");
});
session.addEventListener("signalling", (e) => {
  if (!e.detail.up) banner("Connection to the server lost — reconnecting…", "warn");
  else if (e.detail.resumed) banner("Reconnected to the server");
});
session.addEventListener("participant", (e) => {
  const p = e.detail;
  if (p.role) roles.set(p.identity, p.role);
  if (p.event === "disconnected") banner(`${p.identity} lost its connection — waiting…`, "warn");
  if (p.event === "resumed" || p.event === "joined") banner(`${p.identity} is here`);
  if (p.event === "left") banner(`${p.identity} left`);
});

setInterval(async () => {
  const q = await quality(session.pub, state.quality);
  if (!q) return;
  state.quality = q;
  $("quality").textContent = `RTT ${q.rtt == null ? "—" : Math.round(q.rtt) + " ms"}`;
}, 1000);

if (!token) banner("No token: open this page with #token=<kiosk token>", "bad");
else start().catch((e) => banner(`Cannot start: ${e.message}`, "bad"));
