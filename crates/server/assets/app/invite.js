// The invitee's page: /invite/{room}#code=<id>.<secret>. The code stays in the fragment (never
// in a request line or a Referer); it is exchanged once for a token of the room
// (POST /api/rooms/{room}/invites/redeem), then the consultation page opens with that token.
// What happened is exposed on `window.cabine` for tests.

import { roomFromPath } from "/app/session.js";

const $ = (id) => document.getElementById(id);
const room = roomFromPath();
const code = new URLSearchParams(location.hash.replace(/^#/, "")).get("code") || "";
history.replaceState(null, "", location.pathname); // The code leaves the address bar.
$("room").textContent = room;
const state = { status: null, identity: null, redirected: false };
window.cabine = { state };

const reasons = {
  404: "This invitation link is not valid.",
  409: "This invitation link was used already: ask the doctor for a new one.",
  410: "This invitation link has expired or was withdrawn: ask the doctor for a new one.",
};

async function redeem() {
  if (!code) {
    $("banner").textContent = "This page needs the full invitation link (it ends with #code=…).";
    $("banner").className = "banner bad";
    return;
  }
  const r = await fetch(`/api/rooms/${encodeURIComponent(room)}/invites/redeem`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ code }),
  });
  state.status = r.status;
  if (!r.ok) {
    $("banner").textContent = reasons[r.status] || `The invitation could not be opened (${r.status}).`;
    $("banner").className = "banner bad";
    $("detail").textContent = (await r.text()).trim();
    return;
  }
  const body = await r.json();
  state.identity = body.identity;
  state.redirected = true;
  $("banner").textContent = `Joining as ${body.kind}…`;
  location.replace(body.url);
}

redeem().catch((e) => {
  $("banner").textContent = `The invitation could not be opened: ${e}`;
  $("banner").className = "banner bad";
});
