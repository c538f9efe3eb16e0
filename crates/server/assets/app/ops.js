// The operators' live dashboard. Token from the URL fragment (never sent with the page request):
// /ops#token=T. Data: GET /api/ops once (to tell a refused token apart), then the server-sent
// events of /api/ops/stream (EventSource cannot set headers, hence ?token=; the server never logs
// queries). The first event carries the last minutes of history; later events append to it.

const WINDOW = 300; // points kept per series: 5 minutes at one per second
const MIN_WINDOW = 60; // sparklines span at least a minute, then grow with the history
const MAX_ROWS = 200;
const token = new URLSearchParams(location.hash.slice(1)).get("token") || "";

const $ = (id) => document.getElementById(id);
const state = { status: "idle", views: 0, last: null, rings: new Map(), node: new Map(), lastEventAt: 0 };
window.cabineOps = state; // for tests and curious operators

function setStatus(s, text) {
  state.status = s;
  $("status").dataset.state = s;
  $("status").textContent = text;
}

function showMessage(html) {
  $("message").innerHTML = html;
  $("message").hidden = false;
}

// --- formatting ---------------------------------------------------------------------------------
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const num = (v) => typeof v === "number" && Number.isFinite(v);
function bits(v) {
  if (!num(v)) return "–";
  if (v >= 1e6) return (v / 1e6).toFixed(v >= 1e7 ? 0 : 1) + " Mbit/s";
  if (v >= 1e3) return (v / 1e3).toFixed(v >= 1e5 ? 0 : 1) + " kbit/s";
  return Math.round(v) + " bit/s";
}
const pct = (v) => (num(v) ? (v * 100).toFixed(v >= 0.1 ? 0 : 1) + " %" : "–");
const ms = (v) => (num(v) ? (v >= 100 ? Math.round(v) : v.toFixed(1)) + " ms" : "–");
const us = (v) => (num(v) ? (v >= 1000 ? (v / 1000).toFixed(1) + " ms" : Math.round(v) + " µs") : "–");
const rate = (v) => (num(v) ? (v >= 100 ? Math.round(v) : v.toFixed(1)).toLocaleString("en") : "–");
const count = (v) => (num(v) ? v.toLocaleString("en") : "–");
const dot = (h) => `<span class="dot ${esc(h)}" title="${esc(h)}"></span>`;

// --- history rings ------------------------------------------------------------------------------
function push(ring, v) {
  ring.push(num(v) ? v : null);
  if (ring.length > WINDOW) ring.splice(0, ring.length - WINDOW);
}
function ring(map, key) {
  let r = map.get(key);
  if (!r) map.set(key, (r = []));
  return r;
}
const NODE_SERIES = ["packets_in_per_s", "packets_out_per_s", "bitrate_in_bps", "bitrate_out_bps", "sessions", "kiosks_connected", "cpu_percent"];
const STREAM_SERIES = ["bitrate_bps", "loss", "jitter_ms", "rtt_ms", "delay_p50_us"];

function nodeValues(v) {
  const n = v.node;
  return {
    packets_in_per_s: n.rates.packets_in_per_s, packets_out_per_s: n.rates.packets_out_per_s,
    bitrate_in_bps: n.rates.bitrate_in_bps, bitrate_out_bps: n.rates.bitrate_out_bps,
    sessions: n.sessions, kiosks_connected: n.kiosks_connected, cpu_percent: n.load.cpu_percent,
  };
}
const streamValues = (s) => ({ bitrate_bps: s.bitrate_bps, loss: s.loss, jitter_ms: s.jitter_ms, rtt_ms: s.rtt_ms, delay_p50_us: s.delay_p50_us });

// A view with history replaces the rings (first event of a connection, also after a reconnect);
// a view without appends one point to each.
function record(v) {
  const alive = new Set(v.streams.map((s) => s.key));
  for (const k of [...state.rings.keys()]) if (!alive.has(k)) state.rings.delete(k);
  if (v.history) {
    state.node = new Map(NODE_SERIES.map((n) => [n, (v.history.node[n] || []).slice(-WINDOW)]));
    for (const s of v.streams) {
      const h = v.history.streams[s.key];
      if (h) state.rings.set(s.key, new Map(STREAM_SERIES.map((n) => [n, (h[n] || []).slice(-WINDOW)])));
      else if (!state.rings.has(s.key)) appendStream(s);
    }
    if (!v.history.node.sessions || !v.history.node.sessions.length) appendNode(v);
  } else {
    appendNode(v);
    for (const s of v.streams) appendStream(s);
  }
}
function appendNode(v) {
  const vals = nodeValues(v);
  for (const n of NODE_SERIES) push(ring(state.node, n), vals[n]);
}
function appendStream(s) {
  let r = state.rings.get(s.key);
  if (!r) state.rings.set(s.key, (r = new Map()));
  const vals = streamValues(s);
  for (const n of STREAM_SERIES) push(ring(r, n), vals[n]);
}
const streamRing = (key, name) => (state.rings.get(key) && state.rings.get(key).get(name)) || [];

// Element-wise sum of right-aligned series (a kiosk's bitrate is its streams' sum).
function sumSeries(list) {
  const len = Math.max(0, ...list.map((s) => s.length));
  const out = new Array(len).fill(null);
  for (const s of list) {
    const off = len - s.length;
    s.forEach((v, i) => { if (num(v)) out[off + i] = (out[off + i] || 0) + v; });
  }
  return out;
}

// An inline SVG sparkline, newest point at the right edge, over the page's current window (one
// minute, growing to five as history accumulates: every sparkline shares the same time axis);
// gaps (nothing measured) break the line.
let windowPoints = MIN_WINDOW;
function spark(series, w = 120, h = 26, label = "") {
  const vals = series.filter(num);
  const max = Math.max(...vals, 0);
  const min = Math.min(...vals, 0);
  const range = max - min || 1;
  const step = w / (windowPoints - 1);
  series = series.slice(-windowPoints);
  const x0 = w - (series.length - 1) * step;
  let d = "";
  let pen = false;
  let points = 0;
  series.forEach((v, i) => {
    if (!num(v)) { pen = false; return; }
    const x = (x0 + i * step).toFixed(1);
    const y = (h - 2 - ((v - min) / range) * (h - 4)).toFixed(1);
    d += (pen ? "L" : "M") + x + " " + y;
    pen = true;
    points++;
  });
  return `<svg class="spark" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}" data-points="${points}" role="img" aria-label="${esc(label)}, last ${Math.round(windowPoints / 60)} min">` +
    `<line x1="0" y1="${h - 0.5}" x2="${w}" y2="${h - 0.5}"></line>${d ? `<path d="${d}"></path>` : ""}</svg>`;
}

// --- rendering ----------------------------------------------------------------------------------
function render(v) {
  const n = v.node;
  windowPoints = Math.min(WINDOW, Math.max(MIN_WINDOW, (state.node.get("sessions") || []).length));
  const roles = Object.entries(n.participants).map(([r, c]) => `${c} ${esc(r)}`).join(" · ") || "none";
  const people = Object.values(n.participants).reduce((a, b) => a + b, 0);
  const load = n.load;
  const card = (label, value, detail, sparkline = "", key = "") =>
    `<div class="card" data-card="${esc(key)}"><div class="label">${label}</div><div class="value">${value}</div><div class="detail">${detail}</div>${sparkline}</div>`;
  $("node").innerHTML = [
    card("Rooms", count(n.rooms), `${count(n.sessions)} sessions`, spark(state.node.get("sessions") || [], 160, 26, "sessions"), "rooms"),
    card("Participants", count(people), roles, "", "participants"),
    card("Kiosks connected", `${count(n.kiosks_connected)}<span class="muted"> / ${count(n.kiosks)}</span>`, "connected / publishing",
      spark(state.node.get("kiosks_connected") || [], 160, 26, "kiosks connected"), "kiosks"),
    card("Forwarded packets/s", rate(n.rates.packets_out_per_s), `received ${rate(n.rates.packets_in_per_s)}/s`,
      spark(state.node.get("packets_out_per_s") || [], 160, 26, "forwarded packets per second"), "packets"),
    card("Bitrate out", bits(n.rates.bitrate_out_bps), `in ${bits(n.rates.bitrate_in_bps)}`,
      spark(state.node.get("bitrate_out_bps") || [], 160, 26, "bitrate out"), "bitrate"),
    card("Load", num(load.cpu_percent) ? load.cpu_percent.toFixed(1) + " %" : "–",
      `CPU of ${load.cpus}${num(load.load_1m) ? ` · load ${load.load_1m.toFixed(2)}` : ""}`,
      spark(state.node.get("cpu_percent") || [], 160, 26, "CPU"), "load"),
  ].join("");

  // Kiosks: kiosk publish sessions, with their link quality.
  const kiosks = [];
  for (const r of v.rooms) for (const p of r.participants) if (p.role === "kiosk" && p.kind === "publish") kiosks.push({ room: r.id, ...p });
  const order = { poor: 0, fair: 1, good: 2 };
  kiosks.sort((a, b) => order[a.health] - order[b.health] || b.loss - a.loss);
  $("kiosks").innerHTML = kiosks.length
    ? table(["Kiosk", "Room", "Link", "Bitrate", "", "Loss", "Jitter", "RTT"],
        kiosks.map((k) => {
          const keys = v.streams.filter((s) => s.room === k.room && s.participant === k.id && s.direction === "in").map((s) => s.key);
          const series = sumSeries(keys.map((key) => streamRing(key, "bitrate_bps")));
          return `<tr class="${esc(k.health)}" data-kiosk="${esc(k.id)}"><td class="id">${dot(k.health)}${esc(k.id)}</td><td class="id">${esc(k.room)}</td>` +
            `<td class="h-${esc(k.health)}">${k.connected ? esc(k.health) : "connecting"}</td>` +
            `<td class="num">${bits(k.bitrate_bps)}</td><td>${spark(series, 120, 22, "kiosk bitrate")}</td>` +
            `<td class="num h-${esc(k.health)}">${pct(k.loss)}</td><td class="num">${ms(k.jitter_ms)}</td><td class="num">${ms(k.rtt_ms)}</td></tr>`;
        }), [3, 5, 6, 7])
    : `<div class="empty">No kiosk connected.</div>`;

  $("rooms").innerHTML = v.rooms.length
    ? `<div class="rooms">${v.rooms.map((r) => `<div class="card room" data-room="${esc(r.id)}"><h3>${esc(r.id)}</h3>${
        r.participants.map((p) => `<span class="chip" title="${esc(p.kind)}, ${p.connected ? "connected" : "connecting"}${p.transport ? ", over " + esc(p.transport) : ""}">${dot(p.health)}<b>${esc(p.id)}</b> ${esc(p.role)} <span class="muted">${p.kind === "publish" ? "↑" : "↓"}${p.transport ? " " + esc(p.transport) : ""}</span></span>`).join("")
      }</div>`).join("")}</div>`
    : `<div class="empty">No room open.</div>`;

  const rows = v.streams.slice(0, MAX_ROWS).map((s) =>
    `<tr class="${esc(s.health)}" data-stream="${esc(s.key)}"><td>${dot(s.health)}<span class="h-${esc(s.health)}">${esc(s.health)}</span></td>` +
    `<td class="id">${esc(s.room)}</td><td class="id">${esc(s.participant)}</td><td>${esc(s.role)}</td>` +
    `<td>${s.direction === "in" ? "↑ in" : "↓ out"}</td><td>${esc(s.class)}</td><td>${esc(s.layer || "–")}</td>` +
    `<td class="num" data-col="bitrate">${bits(s.bitrate_bps)}</td><td>${spark(streamRing(s.key, "bitrate_bps"), 110, 22, "bitrate")}</td>` +
    `<td class="num h-${esc(s.health)}" data-col="loss">${pct(s.loss)}</td><td>${spark(streamRing(s.key, "loss"), 70, 22, "loss")}</td>` +
    `<td class="num">${ms(s.jitter_ms)}</td><td class="num">${ms(s.rtt_ms)}</td>` +
    `<td class="num">${s.direction === "in" ? us(s.delay_p50_us) + " / " + us(s.delay_p99_us) : "–"}</td>` +
    `<td class="num" data-col="packets">${count(s.packets)}</td></tr>`);
  $("streams").innerHTML = v.streams.length
    ? table(["Health", "Room", "Participant", "Role", "Dir.", "Class", "Layer", "Bitrate", "", "Loss", "", "Jitter", "RTT", "Fwd delay p50 / p99", "Packets"], rows, [7, 9, 11, 12, 13, 14]) +
      (v.streams.length > MAX_ROWS ? `<p class="muted">${v.streams.length - MAX_ROWS} more streams, all healthier than these.</p>` : "")
    : `<div class="empty">No stream.</div>`;

  $("updated").textContent = "updated " + new Date(v.time_ms).toLocaleTimeString("en-GB");
}

function table(head, rows, numeric) {
  return `<table><thead><tr>${head.map((h, i) => `<th${numeric.includes(i) ? ' class="num"' : ""}>${esc(h)}</th>`).join("")}</tr></thead><tbody>${rows.join("")}</tbody></table>`;
}

function onView(v) {
  state.views++;
  state.last = v;
  state.lastEventAt = Date.now();
  record(v);
  render(v);
  $("dashboard").hidden = false;
}

// --- connection ---------------------------------------------------------------------------------
// GET /api/ops with the token: the view, or why the token is refused.
async function probe() {
  let r;
  try {
    r = await fetch("/api/ops", { headers: { Authorization: "Bearer " + token }, cache: "no-store" });
  } catch (e) {
    return { kind: "down" };
  }
  if (r.status === 401 || r.status === 403) return { kind: "refused", status: r.status, text: (await r.text()).trim() };
  if (!r.ok) return { kind: "down", status: r.status };
  return { kind: "ok", view: await r.json() };
}

function refused(p) {
  setStatus("refused", `token refused (${p.status})`);
  showMessage(`The server refused the token (HTTP ${p.status}): ${esc(p.text)}\n\n` +
    `The dashboard needs a valid operator token: <code>cabine token --room '*' --role operator --identity ops-1</code>, ` +
    `then open <code>/ops#token=&lt;token&gt;</code>.`);
  $("dashboard").hidden = true;
}

let source = null;
let retry = 1000;

async function connect() {
  const p = await probe();
  if (p.kind === "refused") return refused(p);
  if (p.kind !== "ok") {
    setStatus("reconnecting", "reconnecting…");
    setTimeout(connect, retry);
    retry = Math.min(retry * 2, 15000);
    return;
  }
  $("message").hidden = true;
  if (!state.last) onView(p.view);
  source = new EventSource("/api/ops/stream?token=" + encodeURIComponent(token));
  source.addEventListener("open", () => { retry = 1000; setStatus("live", "live"); });
  source.addEventListener("view", (e) => {
    if (state.status !== "live") setStatus("live", "live");
    onView(JSON.parse(e.data));
  });
  source.addEventListener("error", () => {
    // CONNECTING: the browser reconnects by itself (server restart, drain, network). CLOSED:
    // it gave up (a refusal or an error status); find out which and retry ourselves.
    if (source.readyState === EventSource.CONNECTING) {
      setStatus("reconnecting", "reconnecting…");
      probe().then((q) => { if (q.kind === "refused") { source.close(); refused(q); } });
    } else {
      source.close();
      setStatus("reconnecting", "reconnecting…");
      setTimeout(connect, retry);
    }
  });
}

// The fleet and the walk-in queue (service-wide, from the store, pseudonymous): read every 5 s
// from /api/ops?scope=node (this node's view, which carries both).
const FLEET_ORDER = { in_consultation: 0, waiting: 1, online: 2, idle: 3, offline: 4 };
function renderFleet(v) {
  const fleet = (v.fleet || []).slice().sort((a, b) => FLEET_ORDER[a.state] - FLEET_ORDER[b.state]);
  $("fleet").innerHTML = fleet.length
    ? table(["Kiosk", "Site", "State", "Devices", "Last seen"],
        fleet.map((k) => `<tr data-fleet="${esc(k.ref)}" data-state="${esc(k.state)}"><td class="id">${esc(k.ref)}</td><td>${esc(k.site)}</td>` +
          `<td>${esc(k.state.replace("_", " "))}</td><td>${esc((k.devices || []).join(", "))}</td><td class="num">${count(k.last_seen_s)} s</td></tr>`), [4])
    : `<div class="empty">No kiosk known.</div>`;
  const q = v.queue || {};
  const tickets = q.tickets || [];
  $("queue").innerHTML = q.error
    ? `<div class="empty">Queue unavailable: ${esc(q.error)}</div>`
    : tickets.length
      ? `<p class="muted">${count(q.waiting)} waiting · ${count(q.unanswered)} unanswered</p>` +
        table(["Kiosk", "Specialty", "Priority", "Position", "Waited", "Unanswered"],
          tickets.map((t) => `<tr class="${t.flagged ? "poor" : ""}" data-ticket="${esc(t.kiosk)}"><td class="id">${esc(t.kiosk)}</td><td>${esc(t.specialty)}</td>` +
            `<td>${t.priority ? "yes" : ""}</td><td class="num">${count(t.position)}</td><td class="num">${count(t.waited_s)} s</td><td>${t.flagged ? "flagged" : ""}</td></tr>`), [3, 4])
      : `<div class="empty">Nobody waiting.</div>`;
}

async function pollFleet() {
  try {
    const r = await fetch("/api/ops?scope=node", { headers: { Authorization: "Bearer " + token }, cache: "no-store" });
    if (r.ok) renderFleet(await r.json());
  } catch (e) {
    // The stream's status already says when the server is away.
  }
}

// A stream that stays open but goes silent is shown as such.
setInterval(() => {
  if (state.status === "live" && Date.now() - state.lastEventAt > 4000) setStatus("stalled", "no update for " + Math.round((Date.now() - state.lastEventAt) / 1000) + " s");
}, 1000);

if (!token) {
  setStatus("no-token", "no token");
  showMessage(`No operator token in the address. Mint one with ` +
    `<code>cabine token --room '*' --role operator --identity ops-1</code> and open ` +
    `<code>/ops#token=&lt;token&gt;</code> (the part after # never leaves the browser).`);
} else {
  setStatus("connecting", "connecting…");
  connect();
  pollFleet();
  setInterval(pollFleet, 5000);
}
