// Plays a room over WHEP. From the URL fragment (never sent to a server):
// /demo/watch#room=R&token=T[&video=1&audio=2][&from=<identity>][&relay=1]
(function () {
  const params = new URLSearchParams(location.hash.slice(1));
  // relay=1: TURN relays only.
  const iceTransportPolicy = params.get("relay") === "1" ? "relay" : "all";
  const room = params.get("room") || "";
  const token = params.get("token") || "";
  const from = params.get("from");
  const count = (name, dflt) => {
    const n = parseInt(params.get(name) || "", 10);
    return Number.isFinite(n) && n >= 0 && n <= 16 ? n : dflt;
  };
  const nVideo = count("video", 1);
  const nAudio = count("audio", 2);

  const statusEl = document.getElementById("status");
  const mediaEl = document.getElementById("media");
  const unmuteEl = document.getElementById("unmute");
  document.getElementById("room").textContent = room ? "Room " + room : "No room given";

  const cabine = { pc: null, tracks: [], state: "idle", error: null, resource: null, offer: null, answer: null };
  window.cabine = cabine;

  function setState(state, detail) {
    cabine.state = detail ? state + ": " + detail : state;
    statusEl.dataset.state = state;
    statusEl.textContent = cabine.state;
  }
  function fail(message) {
    cabine.error = message;
    setState("error", message);
  }

  // mid -> {stream, track} from the answer's a=msid lines: the publisher's labels.
  function msidByMid(sdp) {
    const out = {};
    let mid = null;
    let msid = null;
    const flush = () => { if (mid !== null && msid) out[mid] = msid; };
    for (const line of sdp.split(/\r?\n/)) {
      if (line.startsWith("m=")) { flush(); mid = null; msid = null; }
      else if (line.startsWith("a=mid:")) mid = line.slice(6).trim();
      else if (line.startsWith("a=msid:")) {
        const [stream, track] = line.slice(7).trim().split(/\s+/);
        msid = { stream, track: track || stream };
      }
    }
    flush();
    return out;
  }

  function waitForIceGathering(pc, ms) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        if (pc.iceGatheringState === "complete") {
          pc.removeEventListener("icegatheringstatechange", done);
          resolve();
        }
      };
      pc.addEventListener("icegatheringstatechange", done);
      setTimeout(resolve, ms); // ICE-lite server: candidates in the offer are optional.
    });
  }

  async function errorText(resp) {
    let body = "";
    try { body = (await resp.text()).trim(); } catch (_) { /* ignore */ }
    return body || resp.status + " " + resp.statusText;
  }

  let audioCtx = null;
  function meter(stream, bar) {
    try {
      audioCtx = audioCtx || new AudioContext();
      const an = audioCtx.createAnalyser();
      an.fftSize = 512;
      audioCtx.createMediaStreamSource(stream).connect(an);
      const buf = new Float32Array(an.fftSize);
      const tick = () => {
        an.getFloatTimeDomainData(buf);
        let peak = 0;
        for (const v of buf) peak = Math.max(peak, Math.abs(v));
        bar.style.width = Math.min(100, Math.round(Math.sqrt(peak) * 100)) + "%";
        if (cabine.pc && cabine.pc.connectionState !== "closed") requestAnimationFrame(tick);
      };
      requestAnimationFrame(tick);
    } catch (_) { /* a meter is a nicety */ }
  }

  function play(el) {
    const p = el.play();
    if (p && p.catch) {
      p.catch(() => {
        unmuteEl.hidden = false;
      });
    }
  }
  unmuteEl.querySelector("button").addEventListener("click", () => {
    unmuteEl.hidden = true;
    if (audioCtx) audioCtx.resume().catch(() => {});
    for (const el of mediaEl.querySelectorAll("audio, video")) play(el);
  });

  function show(track, info) {
    const fig = document.createElement("figure");
    fig.className = track.kind;
    fig.dataset.label = info.label;
    const stream = new MediaStream([track]);
    const cap = document.createElement("figcaption");
    const b = document.createElement("b");
    b.textContent = info.label;
    cap.appendChild(b);
    const note = info.label === "stethoscope" ? " · unprocessed audio" : "";
    cap.appendChild(document.createTextNode(" — " + track.kind + (info.stream ? " from " + info.stream : "") + note));
    if (track.kind === "video") {
      const v = document.createElement("video");
      v.autoplay = true; v.muted = true; v.playsInline = true;
      v.srcObject = stream;
      fig.appendChild(v);
      fig.appendChild(cap);
      mediaEl.prepend(fig);
      play(v);
    } else {
      const a = document.createElement("audio");
      a.autoplay = true;
      a.srcObject = stream;
      const m = document.createElement("div");
      m.className = "meter";
      const bar = document.createElement("div");
      m.appendChild(bar);
      fig.appendChild(a);
      fig.appendChild(m);
      fig.appendChild(cap);
      mediaEl.appendChild(fig);
      play(a);
      meter(stream, bar);
    }
    track.addEventListener("ended", () => fig.remove());
  }

  // The endpoint's STUN/TURN servers (RFC 9725 §4.6): OPTIONS with the token, whose `Link`
  // headers read `<url>; rel="ice-server"; username="…"; credential="…"`.
  async function endpointIceServers(url) {
    try {
      const r = await fetch(url, { method: "OPTIONS", headers: { "Authorization": "Bearer " + token }, cache: "no-store" });
      const param = /;\s*([\w-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;,\s]*))/g;
      const links = (r.headers.get("Link") || "").match(/<[^>]*>(?:\s*;\s*[\w-]+\s*=\s*(?:"(?:[^"\\]|\\.)*"|[^;,]*))*/g) || [];
      return links.flatMap((link) => {
        const p = {};
        for (const m of link.matchAll(param)) p[m[1].toLowerCase()] = m[2] !== undefined ? m[2].replace(/\\(.)/g, "$1") : m[3];
        if (!(p.rel || "").split(/\s+/).includes("ice-server")) return [];
        const server = { urls: link.slice(1, link.indexOf(">")) };
        if (p.username !== undefined) { server.username = p.username; server.credential = p.credential || ""; }
        return [server];
      });
    } catch (_) {
      return [];
    }
  }

  async function watch() {
    if (!room || !token) {
      fail("missing room or token in the URL fragment (#room=R&token=T)");
      return;
    }
    if (!window.RTCPeerConnection) {
      fail("this browser cannot do WebRTC here (a secure context is required)");
      return;
    }
    setState("connecting");
    const iceServers = await endpointIceServers("/whep/" + encodeURIComponent(room));
    const pc = new RTCPeerConnection({ iceServers, iceTransportPolicy, bundlePolicy: "max-bundle", rtcpMuxPolicy: "require" });
    cabine.pc = pc;
    for (let i = 0; i < nVideo; i++) pc.addTransceiver("video", { direction: "recvonly" });
    for (let i = 0; i < nAudio; i++) pc.addTransceiver("audio", { direction: "recvonly" });
    let labels = {};
    pc.addEventListener("track", (ev) => {
      const mid = ev.transceiver && ev.transceiver.mid;
      const m = (mid !== null && labels[mid]) || null;
      const info = {
        kind: ev.track.kind,
        label: m ? m.track : ev.track.id,
        stream: m ? m.stream : (ev.streams[0] && ev.streams[0].id) || "",
        mid,
      };
      cabine.tracks.push(info);
      show(ev.track, info);
    });
    pc.addEventListener("connectionstatechange", () => {
      const st = pc.connectionState;
      if (st === "connected") setState("live");
      else if (st === "failed") fail("media connection failed");
      else if (st === "disconnected") setState("reconnecting");
      else if (st === "closed" && !cabine.error) setState("closed");
    });

    await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc, 1500);
    cabine.offer = pc.localDescription.sdp;
    let url = "/whep/" + encodeURIComponent(room);
    if (from) url += "?from=" + encodeURIComponent(from);
    const resp = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/sdp", "Authorization": "Bearer " + token },
      body: cabine.offer,
      cache: "no-store",
    });
    if (resp.status !== 201) throw new Error(await errorText(resp));
    const loc = resp.headers.get("Location");
    if (loc) cabine.resource = new URL(loc, location.href).href;
    const answer = await resp.text();
    cabine.answer = answer;
    labels = msidByMid(answer);
    await pc.setRemoteDescription({ type: "answer", sdp: answer });
    if (pc.connectionState === "connected") setState("live");
    if (!Object.keys(labels).length) statusEl.textContent = cabine.state + " (nothing published in this room yet)";
  }

  let ended = false;
  function end() {
    if (ended) return;
    ended = true;
    if (cabine.resource) {
      fetch(cabine.resource, { method: "DELETE", headers: { "Authorization": "Bearer " + token }, keepalive: true })
        .catch(() => {});
    }
    if (cabine.pc) cabine.pc.close();
  }
  window.addEventListener("pagehide", end);

  watch().catch((e) => fail((e && e.message) || String(e)));
})();
