// The doctor's queue page: /queue#token=<doctor token for "*" granted `take`>. Lists the
// waiting patients (GET /api/queue every 2 s: pseudonymous cabin, site, reason, wait,
// priority and the operators' flag) and, on "Take", takes the ticket
// (POST /api/queue/{ticket}/take) and opens the consultation page of the new room with the
// doctor's token the server gave. docs/queue.md. Exposed on `window.cabine` for tests.

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.hash.replace(/^#/, ""));
const token = params.get("token") || "";
history.replaceState(null, "", location.pathname); // The token leaves the address bar.
const auth = { authorization: `Bearer ${token}` };

const state = { tickets: [], refreshes: 0, taking: null, messages: [], lastError: null };
window.cabine = { state, take };

function banner(text, level = "") {
  $("banner").textContent = text;
  $("banner").className = "banner " + level;
  state.messages.push(text);
}

function waited(s) {
  if (s < 60) return `${s} s`;
  return `${Math.floor(s / 60)} min ${s % 60} s`;
}

function cell(text, cls = "") {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function draw() {
  const rows = state.tickets.map((t) => {
    const tr = document.createElement("tr");
    if (t.flagged) tr.className = "flagged";
    tr.dataset.ticket = t.ticket;
    tr.append(
      cell(`${t.position}${t.priority ? " (priority)" : ""}`),
      cell(t.specialty),
      cell(t.kiosk, "muted"),
      cell(t.site || ""),
      cell(t.reason || ""),
      cell(waited(t.waited_s)),
    );
    const td = document.createElement("td");
    const b = document.createElement("button");
    b.type = "button";
    b.className = "take";
    b.textContent = "Take";
    b.disabled = state.taking !== null;
    b.onclick = () => take(t.ticket);
    td.append(b);
    tr.append(td);
    return tr;
  });
  document.querySelector("#tickets tbody").replaceChildren(...rows);
  $("empty").classList.toggle("hidden", rows.length > 0);
}

async function refresh() {
  const s = $("specialty").value.trim();
  const r = await fetch(`/api/queue${s ? `?specialty=${encodeURIComponent(s)}` : ""}`, { headers: auth }).catch(() => null);
  if (!r) return banner("The server does not answer; retrying…", "warn");
  if (!r.ok) {
    state.lastError = r.status;
    return banner(r.status === 403 || r.status === 401
      ? `This page needs a doctor's token for every room granted "take" (${r.status}).`
      : `The queue could not be read (${r.status}).`, "bad");
  }
  state.tickets = (await r.json()).tickets;
  state.refreshes++;
  const n = state.tickets.length;
  banner(n ? `${n} patient${n > 1 ? "s" : ""} waiting` : "Nobody is waiting");
  draw();
}

async function take(ticket) {
  if (state.taking) return;
  state.taking = ticket;
  draw();
  const r = await fetch(`/api/queue/${encodeURIComponent(ticket)}/take`, { method: "POST", headers: auth });
  if (!r.ok) {
    state.taking = null;
    const why = { 409: "another doctor took this patient", 410: "the patient left the queue", 404: "unknown ticket" }[r.status];
    banner(`Not taken: ${why || `${r.status} ${(await r.text()).trim()}`}`, "warn");
    await refresh();
    return;
  }
  const body = await r.json();
  banner("Opening the consultation…");
  location.assign(body.url);
}

$("specialty").onchange = () => refresh();
if (!token) banner("This page needs a doctor's token (#token=…).", "bad");
else {
  refresh();
  setInterval(refresh, 2000);
}
