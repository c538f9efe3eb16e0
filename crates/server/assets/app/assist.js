// Assisted teleconsultation and tele-expertise on the consultation page (loaded after
// consult.js, whose session it shares through `window.cabine`).
// - A doctor mints one-time invite links (specialist, interpreter, orthoptist; device commands
//   optional), lists and revokes them (/api/rooms/{room}/invites), allows or stops allowing
//   each assistant in the room to operate the devices (signalling `allow_commands`), and
//   shares the still it looks at with the room (POST /api/rooms/{room}/stills).
// - Everyone else sees the stills the doctor shares (`still_shared`, then a fetch with its
//   token) and whether it may operate the devices (`commands_allowed`).
// What the page shows is exposed on `window.cabine.assist` for tests.

const { session } = window.cabine;
const room = session.room;
const token = session.token;
const role = claimsOf(token).role || "";
// Relative to the node the session is on now (`session.url`): after a move (a drain, a lost
// node) the room and its stills live on the new node, not on the one that served this page.
const api = `/api/rooms/${encodeURIComponent(room)}`;
const auth = { authorization: `Bearer ${token}` };

const assist = {
  role,
  invites: [], // as listed: {id, kind, grants, expires_at, state}
  links: [], // links minted by this page: {id, url}
  assistants: new Map(), // identity -> allowed (bool)
  sharedStills: [], // {id, from, mime, bytes, shown}
  commandsAllowed: false, // for an assistant: may it operate the devices now
  errors: [],
};
window.cabine.assist = assist;

function claimsOf(jwt) {
  try {
    const b64 = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)));
  } catch {
    return {};
  }
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e[k] = v;
    else e.setAttribute(k, v);
  }
  e.append(...children);
  return e;
}

const side = document.querySelector("aside.side");
const panel = el("section", { class: "assist", id: "assist" });
side.prepend(panel);

// --- shared stills: every participant ----------------------------------------------------------
const shared = el("figure", { class: "still hidden", id: "shared-still-box" },
  el("img", { id: "shared-still", alt: "Still shared by the doctor" }),
  el("figcaption", { id: "shared-still-caption", class: "muted" }));
document.querySelector(".stage").append(shared);
shared.querySelector("img").onclick = () => shared.classList.toggle("full");

session.addEventListener("still_shared", async (e) => {
  const s = { ...e.detail, shown: false };
  assist.sharedStills.push(s);
  try {
    const r = await fetch(session.url(`${api}/stills/${encodeURIComponent(s.id)}`), { headers: auth });
    if (!r.ok) throw new Error(`${r.status} ${(await r.text()).trim()}`);
    const url = URL.createObjectURL(await r.blob());
    const img = $("shared-still");
    img.onload = () => {
      s.shown = true;
      s.width = img.naturalWidth;
      URL.revokeObjectURL(url);
    };
    img.src = url;
    $("shared-still-caption").textContent = `Shared by ${s.from} at ${new Date().toLocaleTimeString()}`;
    shared.classList.remove("hidden");
  } catch (err) {
    assist.errors.push(String(err));
  }
});

function $(id) {
  return document.getElementById(id);
}

if (role === "doctor") doctorPanel();
else assistantPanel();

// --- the doctor ------------------------------------------------------------------------------
function doctorPanel() {
  const kind = el("select", { id: "invite-kind" },
    el("option", { value: "specialist" }, "Specialist"),
    el("option", { value: "interpreter" }, "Interpreter"),
    el("option", { value: "orthoptist" }, "Orthoptist"));
  const devices = el("input", { type: "checkbox", id: "invite-commands" });
  const link = el("input", { type: "text", id: "invite-link", readonly: "", class: "hidden" });
  const list = el("ul", { id: "invite-list", class: "muted" });
  const assistants = el("ul", { id: "assistant-list" });
  panel.append(
    el("h2", {}, "Invite"),
    el("div", { class: "row" }, kind,
      el("label", {}, devices, " may operate the devices"),
      el("button", { type: "button", id: "invite", onclick: mint }, "Create link")),
    link,
    list,
    el("h3", {}, "Assistants in the room"),
    assistants,
  );
  const share = el("button", { type: "button", id: "share-still", onclick: shareStill }, "Share with the room");
  const still = $("still-box");
  if (still) still.append(share);

  async function mint() {
    const grants = ["publish", "subscribe"];
    if (devices.checked) grants.push("commands");
    const r = await fetch(session.url(`${api}/invites`), {
      method: "POST",
      headers: { ...auth, "content-type": "application/json" },
      body: JSON.stringify({ kind: kind.value, grants }),
    });
    if (!r.ok) {
      assist.errors.push(`invite: ${r.status} ${(await r.text()).trim()}`);
      link.value = `Refused: ${assist.errors[assist.errors.length - 1]}`;
      link.classList.remove("hidden");
      return;
    }
    const body = await r.json();
    const url = session.url(body.url).href;
    assist.links.push({ id: body.id, url });
    link.value = url;
    link.classList.remove("hidden");
    link.select();
    await refresh();
  }

  async function refresh() {
    const r = await fetch(session.url(`${api}/invites`), { headers: auth });
    if (!r.ok) return;
    assist.invites = (await r.json()).invites;
    list.replaceChildren(...assist.invites.map((i) => {
      const li = el("li", {}, `${i.kind} (${i.grants.join(", ")}): ${i.state}`);
      if (i.state === "pending") {
        li.append(" ", el("button", { type: "button", onclick: () => revoke(i.id) }, "Revoke"));
      }
      return li;
    }));
  }

  async function revoke(id) {
    const r = await fetch(session.url(`${api}/invites/${encodeURIComponent(id)}`), { method: "DELETE", headers: auth });
    if (!r.ok) assist.errors.push(`revoke: ${r.status}`);
    await refresh();
  }

  function drawAssistants() {
    assistants.replaceChildren(...[...assist.assistants.entries()].map(([identity, allowed]) =>
      el("li", {}, `${identity} `,
        el("button", {
          type: "button",
          class: allowed ? "on" : "",
          "data-identity": identity,
          onclick: () => session.send({ type: "allow_commands", identity, allow: !allowed }),
        }, allowed ? "Stop device control" : "Allow device control"))));
  }

  session.addEventListener("participant", (e) => {
    const p = e.detail;
    if (p.role !== "assistant") return;
    if (p.event === "left") assist.assistants.delete(p.identity);
    else if (!assist.assistants.has(p.identity)) assist.assistants.set(p.identity, false);
    drawAssistants();
    refresh();
  });
  session.addEventListener("commands_allowed", (e) => {
    assist.assistants.set(e.detail.identity, e.detail.allowed);
    drawAssistants();
  });

  // The still shown (a kiosk's full-resolution snapshot or a frame): drawn again, uploaded.
  async function shareStill() {
    const img = $("still");
    if (!img || !img.naturalWidth) return;
    const c = document.createElement("canvas");
    c.width = img.naturalWidth;
    c.height = img.naturalHeight;
    c.getContext("2d").drawImage(img, 0, 0);
    const blob = await new Promise((ok) => c.toBlob(ok, "image/jpeg", 0.92));
    let r;
    try {
      r = await fetch(session.url(`${api}/stills`), {
        method: "POST",
        headers: { ...auth, "content-type": "image/jpeg" },
        body: blob,
      });
    } catch (err) {
      share.textContent = "Not shared (no answer from the server)";
      assist.errors.push(`share: ${err}`);
      return;
    }
    share.textContent = r.ok ? "Shared with the room" : `Not shared (${r.status})`;
    if (!r.ok) assist.errors.push(`share: ${r.status} ${(await r.text()).trim()}`);
  }

  refresh();
}

// --- an assistant or invitee -----------------------------------------------------------------
function assistantPanel() {
  const status = el("p", { id: "device-control", class: "muted" }, "The doctor operates the devices.");
  panel.append(el("h2", {}, `Joined as ${role || "participant"}`), status);
  session.addEventListener("commands_allowed", (e) => {
    if (e.detail.identity !== session.identity) return;
    assist.commandsAllowed = e.detail.allowed;
    status.textContent = e.detail.allowed
      ? "The doctor allows you to operate the devices."
      : "The doctor operates the devices.";
    const bp = $("measure-bp");
    if (bp && e.detail.allowed && window.cabine.state.channels.size) bp.disabled = false;
  });
}
