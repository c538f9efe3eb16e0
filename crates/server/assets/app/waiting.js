// The kiosk page in queue mode: /kiosk#token=<kiosk token>[&reason=…][&specialty=…]
// [&priority=1][&site=…][&stethoscope=1][&device=1]. It asks for the next available doctor
// (POST /api/queue), shows its position and estimated wait from the ticket's event stream
// (GET /api/queue/{ticket}/events, polling when streams are refused), lets the patient cancel,
// and once a doctor takes the ticket opens the kiosk page of the new room with the token the
// server gave (the other options carried along), which joins by itself. docs/queue.md.
// What the page shows is exposed on `window.cabine` for tests.

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.hash.replace(/^#/, ""));
const token = params.get("token") || "";
history.replaceState(null, "", location.pathname); // The token leaves the address bar.
const auth = { authorization: `Bearer ${token}` };

const state = { ticket: null, state: "asking", position: null, estimatedWaitS: null, positions: [], messages: [], room: null, follow: null };
window.cabine = { state };

function banner(text, level = "") {
  $("banner").textContent = text;
  $("banner").className = "banner " + level;
  state.messages.push(text);
}

function minutes(s) {
  if (s == null) return "—";
  if (s < 60) return "less than a minute";
  const m = Math.round(s / 60);
  return m === 1 ? "about 1 minute" : `about ${m} minutes`;
}

let source = null;
let poller = null;

function show(t) {
  if (t.state === "waiting") {
    state.state = "waiting";
    if (state.position !== t.position) state.positions.push(t.position);
    state.position = t.position;
    state.estimatedWaitS = t.estimated_wait_s;
    $("position").textContent = String(t.position);
    $("estimate").textContent = minutes(t.estimated_wait_s);
    banner("Waiting for a doctor");
    $("cancel").disabled = false;
  } else if (t.state === "taken") {
    state.state = "taken";
    state.room = t.room;
    stop();
    banner("A doctor is ready: opening the consultation…");
    // The kiosk page's own options (stethoscope, device camera, relay) go along.
    const extra = new URLSearchParams();
    for (const k of ["stethoscope", "device", "relay"]) if (params.get(k)) extra.set(k, params.get(k));
    const rest = extra.toString();
    location.replace(t.url + (rest ? `&${rest}` : ""));
  } else {
    ended(t.state);
  }
}

function ended(what) {
  state.state = what;
  stop();
  $("cancel").disabled = true;
  $("again").classList.remove("hidden");
  $("position").textContent = "—";
  $("estimate").textContent = "—";
  banner(what === "cancelled" ? "You left the queue." : what === "expired" ? "No doctor could take you in time: please ask again." : `Your request ended (${what}).`, "warn");
}

function stop() {
  if (source) source.close();
  source = null;
  if (poller) clearInterval(poller);
  poller = null;
}

function follow(ticket) {
  const url = `/api/queue/${encodeURIComponent(ticket)}/events?token=${encodeURIComponent(token)}`;
  source = new EventSource(url);
  state.follow = "stream";
  source.addEventListener("status", (e) => show(JSON.parse(e.data)));
  source.onerror = () => {
    // Streams refused (limits.sse_clients) or cut: poll instead, until it works again.
    if (!source || poller) return;
    source.close();
    source = null;
    state.follow = "poll";
    poller = setInterval(poll, 2000);
    poll();
  };
}

async function poll() {
  const r = await fetch(`/api/queue/${encodeURIComponent(state.ticket)}`, { headers: auth }).catch(() => null);
  if (!r) return;
  if (r.status === 410) return ended("expired");
  if (r.status === 404) return ended("unknown");
  if (r.ok) show(await r.json());
}

async function enqueue() {
  $("again").classList.add("hidden");
  banner("Asking for a doctor…");
  const body = {};
  for (const k of ["reason", "specialty", "site", "subject"]) if (params.get(k)) body[k] = params.get(k);
  if (params.get("priority") === "1") body.priority = true;
  const r = await fetch("/api/queue", {
    method: "POST",
    headers: { ...auth, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  if (r.status !== 201 && r.status !== 409) {
    banner(`The queue refused this cabin (${r.status}): ${(await r.text()).trim()}`, "bad");
    state.state = "refused";
    $("again").classList.remove("hidden");
    return;
  }
  // 409: this cabin already waits (a reload): follow its ticket.
  const t = await r.json();
  state.ticket = t.ticket;
  show(t);
  follow(t.ticket);
}

$("cancel").onclick = async () => {
  if (!state.ticket) return;
  $("cancel").disabled = true;
  const r = await fetch(`/api/queue/${encodeURIComponent(state.ticket)}`, { method: "DELETE", headers: auth });
  if (r.status === 204 || r.status === 410) ended("cancelled");
  else if (r.status === 409) banner("A doctor has just taken you: opening the consultation…");
};
$("again").onclick = () => enqueue().catch((e) => banner(String(e), "bad"));

if (!token) banner("This page needs the kiosk's token (#token=…).", "bad");
else enqueue().catch((e) => banner(String(e), "bad"));
