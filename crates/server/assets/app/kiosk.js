// The kiosk page, for cabins that run a browser: /kiosk/{room}#token=<kiosk token>
// [&device=1][&stethoscope=1]. Publishes the room camera and microphone (voice processing on),
// a device camera (otoscope, dermatoscope) that can be switched on mid-consultation, and a
// stethoscope input captured with every processing off; shows the doctor.

import { Session, fragmentParams, forgetFragment, roomFromPath, quality, simulcast } from "/app/session.js";

const $ = (id) => document.getElementById(id);
const room = roomFromPath();
const { token, params } = fragmentParams();
history.replaceState(null, "", location.pathname);
$("room").textContent = room;

const state = { published: [], doctorVideo: false, messages: [], quality: null };
// `#…&relay=1`: TURN relays only (what a network that lets nothing else through leaves).
const iceTransportPolicy = params.get("relay") === "1" ? "relay" : "all";
const session = new Session({ room, token, subscribe: true, iceTransportPolicy });
window.cabine = { session, state, switchDevice };

function banner(text, level = "") {
  $("banner").textContent = text;
  $("banner").className = "banner " + level;
  state.messages.push(text);
}

const NO_PROCESSING = { echoCancellation: false, noiseSuppression: false, autoGainControl: false, channelCount: 1 };

async function listDevices() {
  const all = await navigator.mediaDevices.enumerateDevices();
  const fill = (sel, kind, keep) => {
    for (const d of all.filter((x) => x.kind === kind)) {
      const o = document.createElement("option");
      o.value = d.deviceId;
      o.textContent = d.label || d.deviceId.slice(0, 8);
      sel.append(o);
    }
    if (keep) sel.value = keep;
  };
  fill($("room-cam"), "videoinput");
  fill($("device-cam"), "videoinput");
  fill($("mic"), "audioinput");
  fill($("steth"), "audioinput");
}

async function start() {
  const cam = await navigator.mediaDevices.getUserMedia({
    video: { width: 640, height: 480 },
    audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
  });
  await listDevices();
  $("room-preview").srcObject = cam;
  await session.addTrack(cam.getVideoTracks()[0], "room-camera", undefined, simulcast(3));
  await session.addTrack(cam.getAudioTracks()[0], "microphone");
  if (params.get("stethoscope") === "1" || $("steth").value) {
    const deviceId = $("steth").value;
    const s = await navigator.mediaDevices.getUserMedia({ audio: deviceId ? { ...NO_PROCESSING, deviceId: { exact: deviceId } } : NO_PROCESSING });
    await session.addTrack(s.getAudioTracks()[0], "stethoscope");
  }
  if (params.get("device") === "1") await switchDevice();
  session.start();
}

let deviceStream = null;
async function switchDevice() {
  if (deviceStream) return;
  const id = $("device-cam").value;
  deviceStream = await navigator.mediaDevices.getUserMedia({ video: id ? { deviceId: { exact: id } } : { width: 640, height: 480 } });
  $("device-preview").srcObject = deviceStream;
  $("device-toggle").disabled = true;
  // A new m-line on the publish connection: the server renegotiates the doctor's side.
  await session.addTrack(deviceStream.getVideoTracks()[0], "device-camera", undefined, simulcast(2));
}
$("device-toggle").onclick = () => switchDevice().catch((e) => banner(e.message, "bad"));
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
