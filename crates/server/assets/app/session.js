// Cabine signalling client (docs/signalling.md): one WebSocket, a publish peer connection (we
// offer) and a subscribe peer connection (the server offers, again whenever tracks change).
// The session survives a dropped socket: it reconnects with `resume` and, if the server forgot
// it, joins again from scratch. No dependencies.

const V = 1;

// The page's fragment as it was opened (pages clear it from the address bar), carried along
// when a cluster node redirects the page to the node that holds its room.
let openedFragment = "";

// The page's fragment (`#token=…&…`), kept for this tab in sessionStorage (never sent anywhere,
// gone with the tab) because pages clear it from the address bar: a reload (F5) opens the same
// session again instead of asking for the link. `forgetFragment()` drops it (on leave).
export function fragmentParams() {
  let hash = location.hash;
  try {
    if (hash.replace(/^#/, "")) sessionStorage.setItem(fragmentKey(), withHops(hash, 0));
    else hash = sessionStorage.getItem(fragmentKey()) || "";
  } catch (_) { /* storage off: a reload needs the link again */ }
  openedFragment = hash;
  const p = new URLSearchParams(hash.replace(/^#/, ""));
  return { token: p.get("token") || "", params: p };
}

export function forgetFragment() {
  try { sessionStorage.removeItem(fragmentKey()); } catch (_) { /* storage off */ }
}

function fragmentKey() {
  return "cabine:fragment:" + location.pathname;
}

// How long a page moving to another node keeps its old session at most, waiting for the new
// one to carry the same publishers.
const MOVE_WAIT_MS = 10000;
// Signalling heartbeat: a ping every second; three seconds without a word mean the node is gone.
const HEARTBEAT_MS = 1000;
const HEARTBEAT_TIMEOUT_MS = 3000;
// A node the page moves to must open the socket within this, or the next one is tried.
const CONNECT_TIMEOUT_MS = 3000;

// Redirects between cluster nodes a page follows in a row before it gives up.
const MAX_REDIRECTS = 3;

function redirectHops() {
  const n = Number(new URLSearchParams(openedFragment.replace(/^#/, "")).get("hops"));
  return Number.isInteger(n) && n > 0 ? n : 0;
}

// `fragment` with `hops=n` (dropped when 0).
function withHops(fragment, n) {
  const p = new URLSearchParams(fragment.replace(/^#/, ""));
  if (n > 0) p.set("hops", String(n));
  else p.delete("hops");
  const s = p.toString();
  return s ? "#" + s : "";
}

export function roomFromPath() {
  const parts = location.pathname.split("/").filter(Boolean);
  return decodeURIComponent(parts[parts.length - 1] || "");
}

// --- SDP helpers -----------------------------------------------------------------------------
function splitSdp(sdp) {
  const lines = sdp.split("\r\n").filter((l) => l.length);
  const session = [];
  const sections = [];
  for (const l of lines) {
    if (l.startsWith("m=")) sections.push([l]);
    else if (sections.length) sections[sections.length - 1].push(l);
    else session.push(l);
  }
  return { session, sections };
}
function joinSdp({ session, sections }) {
  return [...session, ...sections.flat()].join("\r\n") + "\r\n";
}
function setFmtp(section, codec, extra) {
  const rtpmap = section.find((l) => new RegExp("^a=rtpmap:\\d+ " + codec + "/", "i").test(l));
  if (!rtpmap) return;
  const pt = rtpmap.slice(9).split(" ")[0];
  const prefix = "a=fmtp:" + pt + " ";
  let i = section.findIndex((l) => l.startsWith(prefix));
  const kv = new Map();
  if (i >= 0) {
    for (const p of section[i].slice(prefix.length).split(";")) {
      const [k, v] = p.trim().split("=");
      if (k) kv.set(k, v ?? "");
    }
  } else {
    i = section.indexOf(rtpmap) + 1;
    section.splice(i, 0, "");
  }
  for (const [k, v] of Object.entries(extra)) kv.set(k, String(v));
  section[i] = prefix + [...kv].map(([k, v]) => k + "=" + v).join(";");
}
// Our offer as the server should see it: each m-line labelled `a=msid:<stream> <label>` (the
// browser uses random ids) so the server and the other side know what each track is.
function labelOffer(sdp, stream, labels) {
  const parts = splitSdp(sdp);
  parts.sections.forEach((s, i) => {
    const label = labels[i];
    if (!label) return;
    let has = false;
    for (let j = 0; j < s.length; j++) {
      if (s[j].startsWith("a=msid:")) { s[j] = `a=msid:${stream} ${label}`; has = true; }
      const m = /^a=ssrc:(\d+) msid:/.exec(s[j]);
      if (m) s[j] = `a=ssrc:${m[1]} msid:${stream} ${label}`;
    }
    if (!has) s.splice(s.findIndex((l) => l.startsWith("a=mid:")) + 1, 0, `a=msid:${stream} ${label}`);
  });
  return joinSdp(parts);
}
// The server's answer configures our encoders: the stethoscope goes out as Opus music mode
// (stereo=1 makes libwebrtc pick the "audio" application, no VoIP high-pass), 96 kbit/s, no DTX.
function tuneAnswer(sdp, labels) {
  const parts = splitSdp(sdp);
  parts.sections.forEach((s, i) => {
    if (labels[i] === "stethoscope" && s[0].startsWith("m=audio")) {
      setFmtp(s, "opus", { stereo: 1, maxaveragebitrate: 96000, usedtx: 0, useinbandfec: 1 });
    }
  });
  return joinSdp(parts);
}

// --- the session -----------------------------------------------------------------------------
export class Session extends EventTarget {
  // iceServers: used besides those of the server's `welcome` (TURN with credentials minted for
  // this session); iceTransportPolicy "relay" uses TURN only.
  constructor({ room, token, subscribe = true, iceServers = [], iceTransportPolicy = "all" }) {
    super();
    this.room = room;
    this.token = token;
    this.subscribe = subscribe;
    this.baseIceServers = iceServers;
    this.iceServers = iceServers;
    this.iceTransportPolicy = iceTransportPolicy;
    this.resumeToken = null;
    this.identity = null;
    this.ws = null;
    this.sub = null; // subscribe RTCPeerConnection
    this.pub = null; // publish RTCPeerConnection
    this.sends = []; // [{track, label, stream}]
    this.answered = 0; // highest offer id answered
    this.tracks = new Map(); // mid -> track info (track_added)
    this.telemetry = { reliable: null, lossy: null, commands: null };
    this.closed = false;
    this.reconnects = 0;
    this.state = "connecting";
    this.addEventListener("media", (e) => reportRelayProtocol(this, e.detail));
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
  setState(s, why = "") {
    this.state = s;
    this.emit("state", { state: s, why });
  }

  start() {
    this.connect(false);
  }

  // `path` on the node this session is on now: the node the room moved to (a `move`, a lost
  // node), else this page's own origin. Every request of the page about its room goes there
  // (the room lives on one node; the others would redirect, or be gone).
  url(path) {
    return new URL(path, this.base || location.href);
  }

  connect(resume) {
    const url = this.url(`/ws/${encodeURIComponent(this.room)}`);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("token", this.token);
    const ws = new WebSocket(url);
    if (ws.readyState === WebSocket.CLOSED && this.moving) {
      // Refused before any connection (Chromium: the page's content-security policy; the
      // socket is born closed and no `close` event follows).
      this.unreachable(url.origin);
      return;
    }
    this.ws = ws;
    this.welcomed = false;
    if (this.moving) {
      // Looking for the room: a node that does not answer soon (gone without refusing
      // connections) is skipped rather than waited for.
      setTimeout(() => {
        if (this.ws !== ws || this.closed || ws.readyState !== WebSocket.CONNECTING) return;
        ws.onclose = null;
        try { ws.close(); } catch (_) { /* never opened */ }
        this.unreachable(url.origin);
      }, CONNECT_TIMEOUT_MS);
    }
    ws.onopen = () => {
      if (resume && this.resumeToken) this.send({ type: "resume", resume: this.resumeToken });
      else this.send({ type: "join", subscribe: this.subscribe });
      this.heartbeat(ws);
    };
    ws.onmessage = (e) => {
      if (this.ws === ws) this.heard = Date.now();
      this.onMessage(JSON.parse(e.data)).catch((err) => this.emit("error", { message: String(err) }));
    };
    ws.onclose = () => {
      if (this.ws !== ws || this.closed) return;
      // Moving (a drain or a lost node) and this node did not take us: the next node.
      if (this.moving && !this.welcomed) {
        setTimeout(() => { if (!this.closed && this.ws === ws) this.nextNode(); }, 300);
        return;
      }
      this.setState("reconnecting", "signalling connection lost");
      this.emit("signalling", { up: false });
      // In a cluster, a node that refuses the reconnection too is taken for dead: the room is
      // looked for on the others.
      if (this.reconnects >= 1 && this.nodes && this.nodes.length > 1) {
        this.reconnects++;
        this.nodeLost();
        return;
      }
      const delay = Math.min(4000, 250 * 2 ** Math.min(this.reconnects, 4));
      this.reconnects++;
      setTimeout(() => { if (!this.closed) this.connect(true); }, delay);
    };
  }

  // While moving, the node at `origin` (`ws(s):` or `http(s):`) cannot be reached from this
  // page: it refused or did not answer, or the page's content-security policy refuses it (the
  // policy names the cluster's nodes as they were when the page loaded: a node that joined
  // later is refused). A node that holds the room (named by a `move` or a redirect) is then
  // reached by opening this page there; any other is skipped while the room is looked for.
  unreachable(origin) {
    const http = origin.replace(/^ws/, "http");
    (this.tried = this.tried || new Set()).add(http);
    if (this.redirectedTo === http) this.reopenAt(http);
    else setTimeout(() => { if (!this.closed) this.nextNode(); }, 300);
  }

  // A `ping` every HEARTBEAT_MS; a socket that heard nothing for HEARTBEAT_TIMEOUT_MS is
  // dead (a node killed, a network gone: TCP alone would take minutes to say so). Then the
  // room is looked for on the cluster's other nodes, from the welcome's list.
  heartbeat(ws) {
    this.heard = Date.now();
    const timer = setInterval(() => {
      if (this.ws !== ws || this.closed || ws.readyState !== WebSocket.OPEN) { clearInterval(timer); return; }
      if (Date.now() - this.heard > HEARTBEAT_TIMEOUT_MS) {
        clearInterval(timer);
        this.emit("signalling", { up: false });
        if (this.nodes && this.nodes.length > 1) {
          ws.onclose = null;
          try { ws.close(); } catch (_) { /* gone */ }
          this.nodeLost();
        } else ws.close();
        return;
      }
      this.send({ type: "ping" });
    }, HEARTBEAT_MS);
  }

  // This node stopped answering: move to another node of the cluster (it redirects to wherever
  // the room is placed now), keeping this session's tracks and tiles until the new one has them.
  nodeLost() {
    const here = this.base || location.origin;
    this.tried = new Set([here]);
    const next = this.nodes.find((u) => new URL(u).origin !== here);
    if (next) this.move(next, "node_lost");
  }

  // While moving: the next node of the list not tried yet (all of them again once each was).
  nextNode() {
    const nodes = (this.nodes || []).map((u) => new URL(u).origin);
    if (!nodes.length) { this.connect(false); return; }
    this.tried = this.tried || new Set();
    let next = nodes.find((o) => !this.tried.has(o));
    if (!next) { this.tried = new Set(); next = nodes[0]; }
    this.tried.add(next);
    this.base = next;
    this.connect(false);
  }

  send(msg) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ v: V, ...msg }));
  }

  async onMessage(m) {
    switch (m.type) {
      case "welcome":
        openedFragment = withHops(openedFragment, 0);
        this.resumeToken = m.resume;
        this.identity = m.identity;
        this.welcomed = true;
        if (m.nodes && m.nodes.length) this.nodes = m.nodes;
        this.useIceServers(m.ice_servers || []);
        this.reconnects = 0;
        this.emit("signalling", { up: true, resumed: m.resumed });
        this.setState("live", m.resumed ? "resumed" : "joined");
        for (const p of m.participants) this.emit("participant", { ...p, event: "present" });
        if (m.resumed) await this.afterResume();
        else if (this.sends.length && !this.pub) await this.publishNow();
        break;
      case "offer":
        await this.onOffer(m);
        break;
      case "answer":
        if (this.pub && this.pub.signalingState === "have-local-offer") {
          await this.pub.setRemoteDescription({ type: "answer", sdp: tuneAnswer(m.sdp, this.pubLabels) });
        }
        this.emit("published", { tracks: m.tracks });
        if (this.republish) {
          this.republish = false;
          await this.publishNow();
        }
        break;
      case "track_added":
        this.tracks.set(m.mid, m);
        this.emit("track_added", m);
        break;
      case "track_removed":
        this.tracks.delete(m.mid);
        this.emit("track_removed", m);
        break;
      case "telemetry":
        this.emit("telemetry_announced", m);
        break;
      case "participant_joined":
      case "participant_left":
      case "participant_disconnected":
      case "participant_resumed":
        this.emit("participant", { ...m, event: m.type.slice("participant_".length) });
        break;
      case "session_ended":
        this.emit("session_ended", m);
        if (m.pc === "publish" && this.pub) {
          this.pub.close();
          this.pub = null;
          await this.publishNow();
        }
        break;
      case "nodes":
        // The cluster's node set changed since the welcome (told before a `pong`).
        if (m.nodes && m.nodes.length) this.nodes = m.nodes;
        this.emit("nodes", { nodes: this.nodes || [] });
        break;
      case "move":
        await this.move(m.url, m.reason);
        break;
      case "redirect": {
        if (this.moving) {
          // Moving: follow it in this page (the old session's tiles stay until the new one
          // has the same tracks).
          const target = new URL(m.url);
          target.protocol = target.protocol === "wss:" ? "https:" : "http:";
          if (location.protocol === "https:" && target.protocol !== "https:") break;
          const ws = this.ws;
          if (ws) { ws.onclose = null; ws.close(); }
          this.base = target.origin;
          this.redirectedTo = target.origin;
          (this.tried = this.tried || new Set()).add(target.origin);
          this.connect(false);
          break;
        }
        // Another node holds the room (a cluster): open this same page there, with the same
        // fragment (the token), so that its signalling is same-origin again. Never from https
        // to http (the token would travel in clear), and at most MAX_REDIRECTS hops in a row
        // (counted in the fragment, reset once a node welcomes us): nodes that disagree on
        // the owner for a moment must not bounce the page for ever.
        const target = new URL(m.url);
        target.protocol = target.protocol === "wss:" ? "https:" : "http:";
        this.reopenAt(target.origin);
        break;
      }
      case "error":
        this.emit("error", m);
        if (m.code === "unknown_session") {
          // The server ended our session (grace period over): start again.
          this.resetMedia();
          this.resumeToken = null;
        }
        if (m.fatal) this.ws && this.ws.close();
        break;
      default:
        // Messages other modules of the page handle (`still_shared`, `commands_allowed`, …).
        this.emit(m.type, m);
        break;
    }
  }

  // Another node holds the room (a cluster): open this same page there, with the same fragment
  // (the token), so that its signalling is same-origin again. Never from https to http (the
  // token would travel in clear), and at most MAX_REDIRECTS hops in a row (counted in the
  // fragment, reset once a node welcomes us): nodes that disagree on the owner for a moment
  // must not bounce the page for ever.
  reopenAt(origin) {
    this.closed = true;
    if (location.protocol === "https:" && !origin.startsWith("https:")) {
      this.emit("error", { code: "redirect_refused", fatal: true, message: `refused a redirect from https to ${origin} (the token would travel in clear); check http.public_url on the cluster's nodes` });
      if (this.ws) this.ws.close();
      return;
    }
    const hops = redirectHops() + 1;
    if (hops > MAX_REDIRECTS) {
      this.emit("error", { code: "redirect_loop", fatal: true, message: `the cluster redirected this page ${hops - 1} times in a row without serving the room; reload in a few seconds` });
      if (this.ws) this.ws.close();
      return;
    }
    this.emit("redirect", { url: origin });
    location.replace(origin + location.pathname + location.search + withHops(openedFragment, hops));
  }

  // The room moves to the node at `url` (its node drains): a new signalling session there,
  // publishing the same tracks and subscribing again, while the old one goes on; the old one is
  // closed once the new one carries every publisher the old one did (or after MOVE_WAIT_MS).
  // The identity is the token's, so the other participants see the same identity throughout.
  async move(url, reason) {
    if (this.moving) return;
    let target;
    try { target = new URL(url); } catch (_) { return; }
    if (location.protocol === "https:" && target.protocol !== "https:") {
      this.emit("error", { code: "move_refused", message: `refused a move from https to ${target.origin} (the token would travel in clear)` });
      return;
    }
    const old = { ws: this.ws, sub: this.sub, pub: this.pub, tracks: this.tracks };
    this.moving = old;
    this.emit("moving", { url: target.origin, reason });
    // What the old node still says about its sessions no longer matters.
    if (old.ws) { old.ws.onmessage = null; old.ws.onclose = null; }
    this.base = target.origin;
    // A `move` names the room's new node; a lost node's successor is only a guess.
    this.redirectedTo = reason === "node_lost" ? null : target.origin;
    this.ws = null; this.sub = null; this.pub = null;
    this.tracks = new Map();
    this.answered = 0;
    this.resumeToken = null;
    this.telemetry = { reliable: null, lossy: null, commands: null };
    for (const s of this.sends) s.transceiver = null;
    this.connect(false);
    const started = Date.now();
    const wanted = () => new Set([...old.tracks.values()].map((t) => `${t.from}/${t.label}`));
    const have = () => new Set([...this.tracks.values()].map((t) => `${t.from}/${t.label}`));
    await new Promise((resolve) => {
      const check = () => {
        const h = have();
        const done = [...wanted()].every((k) => h.has(k)) && (this.sub || !this.subscribe);
        if ((done && this.state === "live") || Date.now() - started > (reason === "node_lost" ? 3 : 1) * MOVE_WAIT_MS) resolve();
        else setTimeout(check, 100);
      };
      check();
    });
    // A moment for the new tracks' first frames, then the old session goes.
    await new Promise((r) => setTimeout(r, 500));
    try { if (old.ws && old.ws.readyState === WebSocket.OPEN) old.ws.send(JSON.stringify({ v: V, type: "leave" })); } catch (_) { /* gone */ }
    if (old.sub) old.sub.close();
    if (old.pub) old.pub.close();
    if (old.ws) old.ws.close();
    for (const [mid, t] of old.tracks) if (!this.tracks.has(mid)) this.emit("track_removed", t);
    this.moving = null;
    this.emit("moved", { url: target.origin, reason });
  }

  resetMedia() {
    if (this.sub) this.sub.close();
    if (this.pub) this.pub.close();
    this.sub = null;
    this.pub = null;
    // The channels went with the old connection: the next one opens its own `commands`
    // channel, and asks for the room's sync again (what the kiosk resent meanwhile).
    this.telemetry = { reliable: null, lossy: null, commands: null };
    this.answered = 0;
    for (const [mid, t] of this.tracks) this.emit("track_removed", t);
    this.tracks.clear();
  }

  async afterResume() {
    // A network change may have broken the media paths: restart ICE where needed.
    const bad = (pc) => pc && ["disconnected", "failed"].includes(pc.iceConnectionState);
    if (bad(this.sub)) this.send({ type: "restart_ice" });
    if (bad(this.pub)) await this.publishNow(true);
  }

  // The servers of a `welcome`: for new peer connections, and for the ICE restarts of the
  // current ones (credentials of an earlier welcome may have expired).
  useIceServers(servers) {
    this.iceServers = this.baseIceServers.concat(servers);
    for (const pc of [this.sub, this.pub]) {
      if (!pc) continue;
      try { pc.setConfiguration({ ...pc.getConfiguration(), iceServers: this.iceServers }); } catch (_) { /* kept */ }
    }
  }

  rtcConfig() {
    return { iceServers: this.iceServers, iceTransportPolicy: this.iceTransportPolicy, bundlePolicy: "max-bundle" };
  }

  ensureSub() {
    if (this.sub) return this.sub;
    const pc = new RTCPeerConnection(this.rtcConfig());
    this.sub = pc;
    pc.onicecandidate = (e) => this.trickle("subscribe", e.candidate);
    pc.ontrack = (e) => {
      const mid = e.transceiver.mid;
      this.emit("track", { mid, track: e.track, info: this.tracks.get(mid), transceiver: e.transceiver });
    };
    pc.ondatachannel = (e) => {
      const ch = e.channel;
      if (ch.label !== "telemetry") return;
      if (ch.protocol === "lossy") this.telemetry.lossy = ch;
      else this.telemetry.reliable = ch;
      ch.onmessage = (ev) => this.emit("telemetry", { data: ev.data, reliable: ch.protocol !== "lossy" });
      const opened = () => {
        this.ensureCommands();
        this.emit("telemetry_open", { protocol: ch.protocol });
      };
      if (ch.readyState === "open") opened();
      else ch.onopen = opened;
    };
    pc.oniceconnectionstatechange = () => this.emit("media", { pc: "subscribe", state: pc.iceConnectionState });
    return pc;
  }

  // Our own channel for telemetry requests and device commands (label `commands`).
  ensureCommands() {
    const had = this.telemetry.commands;
    if (!this.sub || (had && had.readyState !== "closing" && had.readyState !== "closed")) return;
    const ch = this.sub.createDataChannel("commands");
    this.telemetry.commands = ch;
    ch.onopen = () => this.emit("commands_open", {});
    ch.onmessage = (ev) => this.emit("telemetry", { data: ev.data, reliable: true });
  }

  sendCommand(obj) {
    const ch = this.telemetry.commands;
    if (!ch || ch.readyState !== "open") return false;
    ch.send(JSON.stringify(obj));
    return true;
  }

  // Candidates gathered after the SDP left (a TURN allocation over TLS is slower than the
  // offer): the server learns that the path it sees is relayed from them.
  trickle(which, candidate) {
    if (candidate && candidate.candidate) this.send({ type: "candidate", pc: which, candidate: candidate.candidate });
  }

  async onOffer(m) {
    if (m.offer_id <= this.answered) return; // Repeated after a resume: already answered.
    const pc = this.ensureSub();
    await pc.setRemoteDescription({ type: "offer", sdp: m.sdp });
    const answer = await pc.createAnswer();
    await pc.setLocalDescription(answer);
    this.answered = m.offer_id;
    this.send({ type: "answer", offer_id: m.offer_id, sdp: pc.localDescription.sdp });
    this.emit("renegotiated", { offer_id: m.offer_id });
  }

  // Adds a local track to publish with a label; publishes (again) when connected. The msid
  // stream is `stream`, or else this participant's identity as the server's welcome gives it
  // (resolved when the offer is made: tracks added before the welcome get it too).
  // `encodings`: the sender's encodings, e.g. `simulcast(3)` for a camera.
  async addTrack(track, label, stream, encodings) {
    this.sends.push({ track, label, stream, encodings });
    if (this.state === "live") await this.publishNow();
  }

  async publishNow(iceRestart = false) {
    if (!this.sends.length) return;
    let pc = this.pub;
    if (pc && pc.signalingState !== "stable") {
      this.republish = true; // One offer at a time: again once this one is answered.
      return;
    }
    if (!pc) {
      pc = new RTCPeerConnection(this.rtcConfig());
      this.pub = pc;
      pc.onicecandidate = (e) => this.trickle("publish", e.candidate);
      pc.oniceconnectionstatechange = () => this.emit("media", { pc: "publish", state: pc.iceConnectionState });
    }
    const have = new Set(pc.getTransceivers().map((t) => t.sender.track));
    for (const s of this.sends) {
      if (have.has(s.track)) continue;
      const init = { direction: "sendonly", streams: [new MediaStream([s.track])] };
      if (s.encodings) init.sendEncodings = s.encodings;
      const tr = pc.addTransceiver(s.track, init);
      s.transceiver = tr;
    }
    const offer = await pc.createOffer({ iceRestart });
    await pc.setLocalDescription(offer);
    await new Promise((r) => setTimeout(r, 50)); // ICE-lite server: host candidates are a courtesy.
    const byMid = new Map(this.sends.map((s) => [s.transceiver.mid, s]));
    const mids = splitSdp(pc.localDescription.sdp).sections.map((sec) => {
      const l = sec.find((x) => x.startsWith("a=mid:"));
      return l ? l.slice(6) : "";
    });
    this.pubLabels = mids.map((mid) => (byMid.get(mid) || {}).label);
    const stream = (this.sends[0] && this.sends[0].stream) || this.identity || "local";
    this.send({ type: "publish", sdp: labelOffer(pc.localDescription.sdp, stream, this.pubLabels) });
  }

  leave() {
    this.closed = true;
    this.send({ type: "leave" });
    this.resetMedia();
    if (this.ws) this.ws.close();
    this.setState("left");
  }
}

// Tells the server how this page reaches its TURN relay (it sees only the relay's UDP): the
// selected local candidate's relayProtocol, once a connection is up and relayed.
async function reportRelayProtocol(session, { pc: which, state }) {
  if (state !== "connected" && state !== "completed") return;
  // Up to 20 s: on a loaded machine the selected pair shows in getStats late.
  for (let i = 0; i < 40; i++) {
    await new Promise((r) => setTimeout(r, 500));
    const pc = which === "publish" ? session.pub : session.sub;
    if (!pc) return;
    const stats = await pc.getStats();
    let local = null;
    stats.forEach((r) => {
      const pair = r.type === "transport" && r.selectedCandidatePairId && stats.get(r.selectedCandidatePairId);
      if (pair) local = stats.get(pair.localCandidateId) || null;
    });
    if (!local) continue;
    if (local.candidateType === "relay" && local.relayProtocol) {
      session.send({ type: "relay_protocol", pc: which, protocol: local.relayProtocol });
    }
    return;
  }
}

// Simulcast encodings for a camera, lowest layer first: `layers` (2 or 3) of a quarter, half
// and full resolution (rids q, h, f; RFC 8853). The SFU forwards each subscriber the best
// layer its link carries, so a poor link gets a smaller picture rather than none.
export function simulcast(layers) {
  const all = [
    { rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150_000 },
    { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500_000 },
    { rid: "f", scaleResolutionDownBy: 1, maxBitrate: 1_500_000 },
  ];
  return all.slice(all.length - Math.max(2, Math.min(3, layers)));
}

// Connection quality from getStats: round-trip time, loss and receive bitrate of a connection
// since `prev` (an earlier result for the same connection), and each inbound stream's counters
// (`streams`, by stats id, with its `mid`) so a page can tell which stream stalls.
export async function quality(pc, prev) {
  if (!pc) return null;
  const stats = await pc.getStats();
  let rtt = null;
  const streams = new Map();
  stats.forEach((r) => {
    if (r.type === "candidate-pair" && r.nominated && r.currentRoundTripTime !== undefined) rtt = r.currentRoundTripTime * 1000;
    if (r.type === "inbound-rtp") {
      streams.set(r.id, {
        mid: r.mid, kind: r.kind, bytes: r.bytesReceived || 0, packets: r.packetsReceived || 0,
        lost: r.packetsLost || 0, frames: r.framesDecoded || 0,
      });
    }
  });
  const q = { at: performance.now(), pc, rtt, streams, loss: 0, kbps: 0, packets: 0 };
  if (prev && prev.pc === pc) Object.assign(q, rates(q, prev));
  return q;
}

// Loss, bitrate and packets between two `quality` samples of the same connection, from each
// stream's own difference: a stream that went away (its track removed) or a new connection
// (counters from zero) never makes a rate negative; a new stream counts from its second sample.
export function rates(q, older) {
  const dt = (q.at - older.at) / 1000;
  let bytes = 0, dl = 0, dr = 0;
  if (older.pc === q.pc) {
    for (const [id, s] of q.streams) {
      const p = older.streams.get(id);
      if (!p) continue;
      bytes += Math.max(0, s.bytes - p.bytes);
      dl += Math.max(0, s.lost - p.lost);
      dr += Math.max(0, s.packets - p.packets);
    }
  }
  return { loss: dl + dr > 0 ? dl / (dl + dr) : 0, kbps: dt > 0 ? (bytes * 8) / 1000 / dt : 0, packets: dr };
}
