// Publishes the camera, the microphone and (with `stethoscope=1`) a second, unprocessed audio
// track over WHIP. Everything comes from the URL fragment, which browsers never send to a
// server: /demo/publish#room=R&token=T[&stethoscope=1][&stethoscope_device=<deviceId>][&relay=1]
(function () {
  const STREAM_ID = "publisher";
  const params = new URLSearchParams(location.hash.slice(1));
  // relay=1: TURN relays only.
  const iceTransportPolicy = params.get("relay") === "1" ? "relay" : "all";
  const room = params.get("room") || "";
  const token = params.get("token") || "";
  const wantStethoscope = ["1", "true", "yes"].includes((params.get("stethoscope") || "").toLowerCase());
  const stethoscopeDevice = params.get("stethoscope_device");

  const statusEl = document.getElementById("status");
  const tracksEl = document.getElementById("tracks");
  const stopBtn = document.getElementById("stop");
  document.getElementById("room").textContent = room ? "Room " + room : "No room given";

  const cabine = { pc: null, state: "idle", error: null, resource: null, labels: [], offer: null, answer: null };
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

  // --- SDP helpers -------------------------------------------------------------------------
  // Splits an SDP into its session part and its media sections (each starting at "m=").
  function splitSdp(sdp) {
    const lines = sdp.split(/\r?\n/).filter((l) => l !== "");
    const session = [];
    const sections = [];
    for (const line of lines) {
      if (line.startsWith("m=")) sections.push([line]);
      else if (sections.length) sections[sections.length - 1].push(line);
      else session.push(line);
    }
    return { session, sections };
  }
  function joinSdp(parts) {
    const all = parts.session.concat(...parts.sections).filter((l) => l !== "");
    return all.join("\r\n") + "\r\n";
  }
  function opusPayloadTypes(section) {
    return section
      .map((l) => /^a=rtpmap:(\d+) opus\/48000/i.exec(l))
      .filter(Boolean)
      .map((m) => m[1]);
  }
  // Sets fmtp parameters on every Opus payload type of a media section.
  function setOpusParams(section, extra) {
    for (const pt of opusPayloadTypes(section)) {
      const prefix = "a=fmtp:" + pt + " ";
      let idx = section.findIndex((l) => l.startsWith(prefix));
      const kv = new Map();
      if (idx >= 0) {
        for (const p of section[idx].slice(prefix.length).split(";")) {
          const [k, v] = p.trim().split("=");
          if (k) kv.set(k.trim(), (v || "").trim());
        }
      } else {
        const rtpmap = section.findIndex((l) => l.startsWith("a=rtpmap:" + pt + " "));
        section.splice(rtpmap + 1, 0, "");
        idx = rtpmap + 1;
      }
      for (const [k, v] of Object.entries(extra)) kv.set(k, String(v));
      section[idx] = prefix + [...kv].map(([k, v]) => k + "=" + v).join(";");
    }
  }
  // The offer's media sections follow transceiver order: give each the stream id and the label
  // the server and the viewers will see (a=msid:<stream> <track>, RFC 8830), in place of the
  // browser's random ids.
  function labelOffer(sdp, labels, stethoscopeIndex) {
    const parts = splitSdp(sdp);
    parts.sections.forEach((section, i) => {
      const label = labels[i];
      if (!label) return;
      let hasMsid = false;
      for (let j = 0; j < section.length; j++) {
        if (section[j].startsWith("a=msid:")) {
          section[j] = "a=msid:" + STREAM_ID + " " + label;
          hasMsid = true;
        } else {
          const m = /^a=ssrc:(\d+) msid:/.exec(section[j]);
          if (m) section[j] = "a=ssrc:" + m[1] + " msid:" + STREAM_ID + " " + label;
        }
      }
      if (!hasMsid) {
        const at = section.findIndex((l) => l.startsWith("a=mid:"));
        section.splice(at + 1, 0, "a=msid:" + STREAM_ID + " " + label);
      }
      if (i === stethoscopeIndex) {
        // What we would like to receive is irrelevant (sendonly); say what we send.
        setOpusParams(section, { "sprop-stereo": 0, usedtx: 0 });
      }
    });
    parts.session = parts.session.map((l) =>
      l.startsWith("a=msid-semantic:") ? "a=msid-semantic: WMS " + STREAM_ID : l);
    return joinSdp(parts);
  }
  // Applied to the server's answer before setRemoteDescription: the answer's Opus parameters
  // configure the browser's encoder. On the stethoscope section: a high bitrate, no DTX, and
  // stereo=1, because libwebrtc (Chrome, Edge) selects the Opus "audio" (music) application
  // only for 2-channel encoders — in "voip" mode Opus high-passes away the 20–100 Hz band where
  // heart sounds live. The signal stays mono (identical channels cost little in Opus).
  function tuneAnswer(sdp, stethoscopeIndex) {
    if (stethoscopeIndex < 0) return sdp;
    const parts = splitSdp(sdp);
    const section = parts.sections[stethoscopeIndex];
    if (section && section[0].startsWith("m=audio")) {
      setOpusParams(section, { stereo: 1, maxaveragebitrate: 96000, usedtx: 0, useinbandfec: 1, maxplaybackrate: 48000 });
    }
    return joinSdp(parts);
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
      // ICE-lite server: it learns our address from our checks; candidates are a courtesy.
      setTimeout(resolve, ms);
    });
  }

  async function errorText(resp) {
    let body = "";
    try { body = (await resp.text()).trim(); } catch (_) { /* ignore */ }
    return body || resp.status + " " + resp.statusText;
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

  // --- publishing ----------------------------------------------------------------------------
  async function publish() {
    if (!room || !token) {
      fail("missing room or token in the URL fragment (#room=R&token=T)");
      return;
    }
    if (!window.RTCPeerConnection || !navigator.mediaDevices) {
      fail("this browser cannot do WebRTC here (a secure context is required)");
      return;
    }
    setState("connecting");
    const stream = new MediaStream();
    const cam = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } },
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    const sends = [];
    const video = cam.getVideoTracks()[0];
    const mic = cam.getAudioTracks()[0];
    if (video) sends.push({ track: video, label: "camera" });
    if (mic) { mic.contentHint = "speech"; sends.push({ track: mic, label: "microphone" }); }
    let stethoscopeIndex = -1;
    if (wantStethoscope) {
      const audio = { echoCancellation: false, noiseSuppression: false, autoGainControl: false, channelCount: 1 };
      if (stethoscopeDevice) audio.deviceId = { exact: stethoscopeDevice };
      const steth = (await navigator.mediaDevices.getUserMedia({ audio })).getAudioTracks()[0];
      steth.contentHint = "music";
      stethoscopeIndex = sends.length;
      sends.push({ track: steth, label: "stethoscope" });
    }
    if (!sends.length) throw new Error("no camera or microphone available");
    for (const s of sends) stream.addTrack(s.track);
    document.getElementById("preview").srcObject = new MediaStream(video ? [video] : []);

    const iceServers = await endpointIceServers("/whip/" + encodeURIComponent(room));
    const pc = new RTCPeerConnection({ iceServers, iceTransportPolicy, bundlePolicy: "max-bundle", rtcpMuxPolicy: "require" });
    cabine.pc = pc;
    cabine.labels = sends.map((s) => s.label);
    for (const s of sends) {
      const tr = pc.addTransceiver(s.track, { direction: "sendonly", streams: [stream] });
      if (s.label === "stethoscope") {
        // Never the first thing to go when bandwidth is short.
        const p = tr.sender.getParameters();
        if (p.encodings && p.encodings.length) {
          p.encodings[0].priority = "high";
          p.encodings[0].networkPriority = "high";
          p.encodings[0].maxBitrate = 96000;
          try { await tr.sender.setParameters(p); } catch (_) { /* optional */ }
        }
      }
      const li = document.createElement("li");
      li.textContent = s.label + " (" + s.track.kind + (s.track.label ? ", " + s.track.label : "") + ")";
      tracksEl.appendChild(li);
    }
    pc.addEventListener("connectionstatechange", () => {
      const st = pc.connectionState;
      if (st === "connected") setState("live");
      else if (st === "failed") fail("media connection failed");
      else if (st === "disconnected") setState("reconnecting");
      else if (st === "closed" && !cabine.error) setState("closed");
    });

    await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc, 1500);
    const offer = labelOffer(pc.localDescription.sdp, cabine.labels, stethoscopeIndex);
    cabine.offer = offer;

    const resp = await fetch("/whip/" + encodeURIComponent(room), {
      method: "POST",
      headers: { "Content-Type": "application/sdp", "Authorization": "Bearer " + token },
      body: offer,
      cache: "no-store",
    });
    if (resp.status !== 201) throw new Error(await errorText(resp));
    const loc = resp.headers.get("Location");
    if (loc) cabine.resource = new URL(loc, location.href).href;
    const answer = tuneAnswer(await resp.text(), stethoscopeIndex);
    cabine.answer = answer;
    await pc.setRemoteDescription({ type: "answer", sdp: answer });
    if (pc.connectionState === "connected") setState("live");
    stopBtn.hidden = false;
  }

  let ended = false;
  function end() {
    if (ended) return;
    ended = true;
    if (cabine.resource) {
      // keepalive lets the request outlive the page.
      fetch(cabine.resource, { method: "DELETE", headers: { "Authorization": "Bearer " + token }, keepalive: true })
        .catch(() => {});
    }
    if (cabine.pc) {
      for (const s of cabine.pc.getSenders()) if (s.track) s.track.stop();
      cabine.pc.close();
    }
  }
  window.addEventListener("pagehide", end);
  stopBtn.addEventListener("click", () => { end(); stopBtn.hidden = true; setState("closed"); });

  publish().catch((e) => fail((e && e.message) || String(e)));
})();
