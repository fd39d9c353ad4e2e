// The roomcast chat page: the UI around client.js. User data only ever goes
// into the page as text (textContent, text nodes, attribute values we build);
// never as HTML.

import { Backoff, ChatClient, LOBBY } from "/static/client.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const STORE_KEY = "roomcast.session";
const TYPING_EVERY = 3000;
const TYPING_SHOWN = 4000;
const MAX_FILE = 8 * 1024 * 1024;
const INLINE_IMAGES = new Set(["image/png", "image/jpeg", "image/gif", "image/webp"]);
const URL_RE = /\bhttps?:\/\/[^\s<>"'`]+/gi;

let client = null;
let me = null; // {name, guest}
let session = null; // {token, expiresAt, name} or {guest}
let password = null; // kept in memory only, to renew the token before it expires
let refreshTimer = null;
let roomsTimer = null;
let bannerTimer = null;
let current = null;
const convs = new Map(); // "#room" or "@user" -> conversation
let apiRooms = []; // from GET /api/rooms
const lastTyping = new Map();

// -- small helpers ------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data") || key.startsWith("aria") || key === "role") node.setAttribute(key.replace(/^data(?=[A-Z])/, "data-").replace(/^aria(?=[A-Z])/, "aria-").toLowerCase(), value);
    else node[key] = value;
  }
  node.append(...children);
  return node;
}

function backoffFromQuery() {
  // ?backoff=FIRST[,CAP] in milliseconds: for tests and demos (default 500,30000).
  const [first, cap] = (params.get("backoff") ?? "").split(",").map(Number);
  return new Backoff({
    first: first > 0 ? first : 500,
    cap: cap > 0 ? cap : 30000,
  });
}

function wsUrl() {
  return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws`;
}

async function api(method, path, body = null, token = session?.token) {
  const headers = { Accept: "application/json" };
  if (body !== null) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = `Bearer ${token}`;
  const resp = await fetch(path, { method, headers, body: body === null ? null : JSON.stringify(body) });
  let data = null;
  try {
    data = await resp.json();
  } catch {
    data = null;
  }
  if (!resp.ok) {
    const err = new Error(data?.error?.message ?? `${resp.status} ${resp.statusText}`);
    err.code = data?.error?.code ?? String(resp.status);
    err.status = resp.status;
    throw err;
  }
  return data;
}

function showError(message) {
  const item = el("li", { class: "error", dataTestid: "error" });
  item.append(el("span", { text: message }));
  const close = el("button", { type: "button", class: "quiet", text: "Dismiss", ariaLabel: "Dismiss this error" });
  close.addEventListener("click", () => item.remove());
  item.append(close);
  $("errors").append(item);
  while ($("errors").children.length > 4) $("errors").firstElementChild.remove();
  setTimeout(() => item.remove(), 15000);
}

// Names (of people, conversations and files) are shown without controls and
// invisible format characters: a bidi override (U+202E) would show
// "invoice<U+202E>fdp.exe" as "invoiceexe.pdf", and zero-width characters make
// two names look alike. The server strips them from file names and allows no
// such user names, but names from another server or from old stored messages
// may still carry them. ZWNJ and ZWJ stay (emoji and some scripts need them).
// The same rule as roomcast/textsafe.py. Only what is shown changes: who a
// message goes to is still the name the server sent.
const HIDDEN_CHARS = /(?![\u200c\u200d])[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/gu;

function visibleName(name, fallback = "?") {
  return String(name ?? "").replace(HIDDEN_CHARS, "") || fallback;
}

function plural(n, one, many) {
  return `${n} ${n === 1 ? one : many}`;
}

function formatSize(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

function dayLabel(date) {
  const today = new Date();
  const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
  if (date.toDateString() === today.toDateString()) return "Today";
  if (date.toDateString() === yesterday.toDateString()) return "Yesterday";
  return date.toLocaleDateString(undefined, { weekday: "long", year: "numeric", month: "long", day: "numeric" });
}

/** Text with its http(s) URLs as links; every piece is a text node or an <a> we build. */
function richText(text) {
  const frag = document.createDocumentFragment();
  let last = 0;
  for (const match of text.matchAll(URL_RE)) {
    const raw = match[0].replace(/[.,;:!?)\]}'"]+$/, "");
    frag.append(text.slice(last, match.index));
    let url = null;
    try {
      url = new URL(raw);
    } catch {
      url = null;
    }
    if (url && (url.protocol === "http:" || url.protocol === "https:")) {
      frag.append(el("a", { href: url.href, rel: "noopener noreferrer", target: "_blank", text: raw }));
    } else {
      frag.append(raw);
    }
    last = match.index + raw.length;
  }
  frag.append(text.slice(last));
  return frag;
}

function fileBody(file) {
  const box = el("div", { class: "file" });
  const url = file.url.startsWith("/files/") ? file.url : null;
  const name = visibleName(file.name, "file");
  if (url && INLINE_IMAGES.has(file.mime)) {
    const img = el("img", { src: url, alt: name, loading: "lazy", class: "thumb", dataTestid: "file-image" });
    const link = el("a", { href: url, target: "_blank", rel: "noopener noreferrer", class: "thumb-link" }, img);
    box.append(link);
  }
  const label = `${name} (${formatSize(file.size)})`;
  if (url) box.append(el("a", { href: url, download: name, class: "download", dataTestid: "file-link", text: label }));
  else box.append(el("span", { text: label }));
  return box;
}

// -- conversations --------------------------------------------------------------

function conv(key) {
  let c = convs.get(key);
  if (c) return c;
  const type = key[0] === "#" ? "room" : "dm";
  const list = el("ol", {
    class: "messages",
    dataTestid: "messages",
    dataConv: key,
    ariaLive: "polite",
    ariaRelevant: "additions",
    ariaLabel: `Messages in ${type === "room" ? key : `conversation with ${visibleName(key.slice(1))}`}`,
    hidden: true,
  });
  $("lists").append(list);
  c = {
    key, type, name: key.slice(1), list,
    items: new Map(), // seq -> li
    seqs: [], // sorted
    pending: [], // {id, li, text, kind, seq?}
    unread: 0,
    members: new Set(),
    memberCount: 0,
    typing: new Map(),
    hasMore: true,
    loading: false,
    loaded: false,
    joined: false,
  };
  convs.set(key, c);
  return c;
}

function messageLi(item, mine) {
  const li = el("li", { class: `msg${mine ? " mine" : ""}`, dataTestid: "msg", dataFrom: item.from });
  const meta = el("div", { class: "meta" });
  meta.append(el("span", { class: "from", text: visibleName(item.from) }));
  const when = item.timestamp ? new Date(item.timestamp) : new Date();
  li.dataset.day = when.toDateString();
  li.dataset.dayLabel = dayLabel(when);
  meta.append(el("time", { dateTime: when.toISOString(), text: when.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" }), title: when.toLocaleString() }));
  meta.append(el("span", { class: "status", dataTestid: "status" }));
  li.append(meta);
  const body = el("div", { class: "body", dataTestid: "body" });
  if (item.file) body.append(fileBody(item.file));
  else body.append(richText(item.text));
  li.append(body);
  return li;
}

function setStatus(li, state, text = "") {
  li.dataset.state = state;
  const status = li.querySelector(".status");
  if (status) {
    status.textContent = text || { sending: "sending…", acked: "✓", failed: "not sent" }[state] || "";
    status.title = { sending: "waiting for the server", acked: "stored by the server" }[state] || text;
  }
}

function nearBottom() {
  const s = $("scroller");
  return s.scrollHeight - s.scrollTop - s.clientHeight < 80;
}

function scrollToBottom() {
  const s = $("scroller");
  s.scrollTop = s.scrollHeight;
}

const dayFixes = new Set();
function fixDaysSoon(c) {
  if (dayFixes.has(c)) return;
  dayFixes.add(c);
  queueMicrotask(() => {
    dayFixes.delete(c);
    for (const sep of c.list.querySelectorAll(":scope > .day")) sep.remove();
    let last = null;
    for (const li of [...c.list.children]) {
      if (li.dataset.day && li.dataset.day !== last) {
        li.before(el("li", { class: "day", role: "separator", dataTestid: "day", text: li.dataset.dayLabel }));
        last = li.dataset.day;
      }
    }
  });
}

/** Put a seq'd li in its place (seq order, before the pending ones). */
function place(c, seq, li) {
  let lo = 0;
  let hi = c.seqs.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (c.seqs[mid] < seq) lo = mid + 1;
    else hi = mid;
  }
  c.seqs.splice(lo, 0, seq);
  c.items.set(seq, li);
  const next = lo + 1 < c.seqs.length ? c.items.get(c.seqs[lo + 1]) : c.pending.find((p) => p.seq === undefined)?.li;
  if (next && next !== li) next.before(li);
  else if (!next) c.list.append(li);
  li.dataset.seq = String(seq);
  fixDaysSoon(c);
}

/** A message from a stream or a history page; `live`: it just happened. */
function addItem(c, item, live) {
  if (c.items.has(item.seq)) return;
  const mine = me && item.from === me.name;
  if (mine && live) {
    const kind = item.file ? "file" : "text";
    const p = c.pending.find((x) => x.seq === undefined && x.kind === kind && (kind === "file" || x.text === item.text));
    if (p) {
      p.seq = item.seq;
      const bottom = nearBottom();
      const li = messageLi(item, true);
      setStatus(li, "sending");
      p.li.remove();
      p.li = li;
      place(c, item.seq, li);
      if (bottom) scrollToBottom();
      return;
    }
  }
  const bottom = nearBottom();
  const li = messageLi(item, mine);
  place(c, item.seq, li);
  if (live) {
    if (mine) setStatus(li, "acked");
    if (!mine && (c !== current || document.hidden)) {
      c.unread += 1;
      renderNav();
    }
    if (c === current && (bottom || mine)) scrollToBottom();
  }
}

function addPending(c, id, kind, text, fileName = null) {
  const item = { from: me.name, text, file: null, timestamp: null };
  const li = messageLi(item, true);
  if (fileName) {
    li.querySelector(".body").replaceChildren(el("span", { class: "file-pending download", text: visibleName(fileName, "file") }));
  }
  li.dataset.pending = id;
  setStatus(li, "sending");
  c.list.append(li);
  c.pending.push({ id, li, text, kind });
  fixDaysSoon(c);
  scrollToBottom();
}

function findPending(id) {
  for (const c of convs.values()) {
    const p = c.pending.find((x) => x.id === id);
    if (p) return [c, p];
  }
  return [null, null];
}

function onAcked({ id, payload }) {
  const [c, p] = findPending(id);
  if (!c) return;
  c.pending.splice(c.pending.indexOf(p), 1);
  const seq = Number(payload.seq);
  const existing = c.items.get(seq);
  if (existing && existing !== p.li) {
    p.li.remove();
    setStatus(existing, "acked");
  } else {
    if (!existing) {
      delete p.li.dataset.pending;
      place(c, seq, p.li);
    }
    setStatus(p.li, "acked");
  }
  updateBanner();
}

function onFailed({ id, code, message }) {
  const [c, p] = findPending(id);
  if (p) {
    c.pending.splice(c.pending.indexOf(p), 1);
    setStatus(p.li, "failed", `not sent: ${message || code}`);
    p.li.classList.add("failed");
  }
  showError(`Not sent (${code}): ${message}`);
  updateBanner();
}

async function loadOlder(c) {
  if (c.loading || !c.hasMore || !client) return;
  c.loading = true;
  renderOlder();
  const s = $("scroller");
  const before = c.seqs.length ? c.seqs[0] : null;
  try {
    if (c.type === "room") {
      const page = await client.history(c.name, before, 50);
      const height = s.scrollHeight;
      const top = s.scrollTop;
      for (const item of page.messages) addItem(c, item, false);
      c.hasMore = page.hasMore;
      if (before === null) scrollToBottom();
      else s.scrollTop = top + (s.scrollHeight - height);
    } else {
      // Direct messages are one stream for all conversations: page through it.
      const oldest = Math.min(...[...convs.values()].filter((x) => x.type === "dm" && x.seqs.length).map((x) => x.seqs[0]), Infinity);
      const page = await client.directHistory({ before: Number.isFinite(oldest) ? oldest : null, limit: 100 });
      const height = s.scrollHeight;
      const top = s.scrollTop;
      for (const item of page.messages) addDirect(item, false);
      for (const x of convs.values()) if (x.type === "dm") x.hasMore = page.hasMore;
      s.scrollTop = top + (s.scrollHeight - height);
    }
  } catch (err) {
    showError(`Could not load history: ${err.message}`);
  } finally {
    c.loading = false;
    c.loaded = true;
    renderOlder();
  }
}

// The newest page of the user's direct messages, once after signing in, so
// conversations from before this page was opened are listed.
async function loadRecentDirect() {
  try {
    const page = await client.directHistory({ limit: 100 });
    for (const item of page.messages) addDirect(item, false);
    for (const x of convs.values()) {
      if (x.type === "dm") {
        x.hasMore = page.hasMore;
        x.loaded = true;
      }
    }
    renderNav();
    renderOlder();
  } catch (err) {
    showError(`Could not load your direct messages: ${err.message}`);
  }
}

function renderOlder() {
  const button = $("older");
  button.hidden = !current || !current.hasMore;
  button.disabled = Boolean(current?.loading);
  button.textContent = current?.loading ? "Loading…" : "Load older messages";
}

function peerOf(item) {
  return item.from === me?.name ? item.to : item.from;
}

function addDirect(item, live) {
  const c = conv(`@${peerOf(item)}`);
  addItem(c, item, live);
  if (live) renderNav();
}

// -- showing ---------------------------------------------------------------------

function show(c) {
  if (current) current.list.hidden = true;
  current = c;
  c.list.hidden = false;
  c.unread = 0;
  $("title").textContent = c.type === "room" ? `#${c.name}` : `@${visibleName(c.name)}`;
  $("text").placeholder = c.type === "room" ? `Message #${c.name}` : `Message ${visibleName(c.name)}`;
  $("leave").hidden = c.type !== "room" || c.name === LOBBY;
  $("members-pane").classList.toggle("none", c.type !== "room");
  $("members-toggle").hidden = c.type !== "room";
  renderMembers();
  renderTyping();
  renderNav();
  renderOlder();
  if (!c.loaded && (c.type === "dm" || c.joined)) loadOlder(c);
  scrollToBottom();
  closeSidebar();
}

function renderMembers() {
  const list = $("members");
  list.replaceChildren();
  if (!current || current.type !== "room") return;
  const names = [...current.members].sort((a, b) => a.localeCompare(b));
  for (const name of names) {
    const li = el("li", { dataTestid: "member" });
    li.append(el("span", { class: "dot on", ariaHidden: "true" }), el("span", { text: visibleName(name) }));
    if (me && name === me.name) li.append(el("span", { class: "you", text: " (you)" }));
    if (me && !me.guest && !name.startsWith("guest-") && name !== me.name) {
      const dm = el("button", { type: "button", class: "quiet small", text: "Message", ariaLabel: `Message ${visibleName(name)}` });
      dm.addEventListener("click", () => openDm(name));
      li.append(dm);
    }
    list.append(li);
  }
  $("member-count").textContent = String(current.members.size || current.memberCount);
  $("subtitle").textContent = plural(current.members.size || current.memberCount, "member", "members");
}

function renderTyping() {
  const now = Date.now();
  const names = current ? [...current.typing].filter(([, until]) => until > now).map(([n]) => visibleName(n)) : [];
  let text = "";
  if (names.length === 1) text = `${names[0]} is typing…`;
  else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
  else if (names.length > 2) text = "Several people are typing…";
  $("typing").textContent = text;
}

function navButton(label, key, extra) {
  const c = convs.get(key);
  const li = el("li", { class: `nav-item${current?.key === key ? " current" : ""}${c?.joined || c?.type === "dm" ? " joined" : ""}` });
  const button = el("button", { type: "button", dataTestid: `nav-${key}`, ariaCurrent: current?.key === key ? "page" : null });
  button.append(el("span", { class: "nav-label", text: label }));
  if (extra) button.append(el("span", { class: "count", text: extra }));
  if (c && c.unread > 0) button.append(el("span", { class: "badge", dataTestid: "unread", text: String(c.unread), title: plural(c.unread, "unread message", "unread messages") }));
  li.append(button);
  return [li, button];
}

function renderNav() {
  const rooms = new Map();
  for (const r of apiRooms) rooms.set(r.name, { private: r.private, count: r.member_count });
  for (const c of convs.values()) {
    if (c.type === "room" && c.joined) {
      rooms.set(c.name, { private: rooms.get(c.name)?.private ?? false, count: c.members.size || c.memberCount });
    }
  }
  const list = $("rooms");
  list.replaceChildren();
  for (const name of [...rooms.keys()].sort((a, b) => (a === LOBBY ? -1 : b === LOBBY ? 1 : a.localeCompare(b)))) {
    const info = rooms.get(name);
    const [li, button] = navButton(`${info.private ? "🔒" : "#"} ${name}`, `#${name}`, String(info.count ?? 0));
    button.title = `${plural(info.count ?? 0, "member", "members")} online`;
    button.addEventListener("click", () => openRoom(name));
    list.append(li);
  }
  const dms = $("dms");
  dms.replaceChildren();
  for (const c of [...convs.values()].filter((x) => x.type === "dm").sort((a, b) => a.name.localeCompare(b.name))) {
    const [li, button] = navButton(`@ ${visibleName(c.name)}`, c.key, null);
    button.addEventListener("click", () => show(c));
    dms.append(li);
  }
  const unread = [...convs.values()].reduce((n, c) => n + c.unread, 0);
  document.title = unread ? `(${unread}) roomcast` : "roomcast";
}

async function refreshRooms() {
  try {
    const data = await api("GET", "/api/rooms", null, session?.token ?? null);
    apiRooms = Array.isArray(data?.rooms) ? data.rooms : [];
    renderNav();
  } catch {
    // offline: the banner says so already
  }
}

let roomsSoon = null;
function refreshRoomsSoon() {
  clearTimeout(roomsSoon);
  roomsSoon = setTimeout(refreshRooms, 700);
}

async function openRoom(name) {
  const c = conv(`#${name}`);
  if (c.joined) {
    show(c);
    return;
  }
  try {
    await client.join(name);
    c.joined = true;
    show(c);
  } catch (err) {
    showError(`Cannot join #${name}: ${err.serverMessage ?? err.message}`);
    if (!c.seqs.length) {
      c.list.remove();
      convs.delete(c.key);
    }
  }
  refreshRoomsSoon();
}

function openDm(name) {
  if (!me || me.guest) {
    showError("Sign in to send direct messages.");
    return;
  }
  show(conv(`@${name}`));
}

async function leaveCurrent() {
  const c = current;
  if (!c || c.type !== "room" || c.name === LOBBY) return;
  try {
    await client.leave(c.name);
  } catch (err) {
    showError(`Cannot leave #${c.name}: ${err.serverMessage ?? err.message}`);
    return;
  }
  c.list.remove();
  convs.delete(c.key);
  current = null;
  show(conv(`#${LOBBY}`));
  refreshRoomsSoon();
}

// -- the connection banner ----------------------------------------------------------

function updateBanner() {
  const banner = $("banner");
  const text = $("banner-text");
  if (!client) return;
  const queued = client.queued;
  const queuedText = queued ? ` ${plural(queued, "message", "messages")} queued.` : "";
  let state = client.state;
  let message = "";
  $("retry").hidden = true;
  $("resign").hidden = true;
  if (state === "connected") {
    message = `Connected as ${me ? visibleName(me.name) : "…"}.`;
  } else if (state === "closed") {
    message = `Disconnected: ${client.closedReason}`;
    $("resign").hidden = false;
  } else if (client.retryAt !== null) {
    const seconds = Math.max(0, Math.ceil((client.retryAt - Date.now()) / 1000));
    const offline = !navigator.onLine;
    if (offline) state = "offline";
    message = `${offline ? "You are offline." : "Connection lost."} Reconnecting in ${seconds} s.${queuedText}`;
    $("retry").hidden = false;
  } else {
    message = `${state === "connecting" ? "Connecting" : "Reconnecting"}…${queuedText}`;
  }
  banner.dataset.state = state;
  banner.dataset.queued = String(queued);
  if (text.textContent !== message) text.textContent = message;
  $("conn-dot").className = `dot ${state === "connected" ? "on" : state === "closed" ? "off" : "wait"}`;
  $("conn-dot").title = message;
  clearTimeout(bannerTimer);
  if (client.retryAt !== null && state !== "connected") bannerTimer = setTimeout(updateBanner, 500);
}

// -- session ---------------------------------------------------------------------------

function saveSession() {
  try {
    if (session) sessionStorage.setItem(STORE_KEY, JSON.stringify(session));
    else sessionStorage.removeItem(STORE_KEY);
  } catch {
    // storage disabled: this tab simply forgets on reload
  }
}

function loadSession() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(STORE_KEY) ?? "null");
    if (saved?.token && Date.parse(saved.expiresAt) > Date.now() + 60000) return saved;
    if (saved?.guest) return saved;
  } catch {
    // unreadable: start over
  }
  return null;
}

async function login(username, pass) {
  const data = await api("POST", "/api/login", { username, password: pass }, null);
  return { token: data.token, expiresAt: data.expires_at, name: data.user.name };
}

function scheduleRefresh() {
  clearTimeout(refreshTimer);
  if (!password || !session?.token) return;
  const wait = Date.parse(session.expiresAt) - Date.now() - 5 * 60 * 1000;
  refreshTimer = setTimeout(() => renewToken().catch(() => {}), Math.max(10000, Math.min(wait, 2 ** 31 - 1)));
}

async function renewToken() {
  if (!password || !session?.token) return null;
  try {
    session = await login(session.name, password);
  } catch (err) {
    if (err.status === 401) password = null;
    throw err;
  }
  saveSession();
  scheduleRefresh();
  return session.token;
}

function start() {
  $("signin").hidden = true;
  $("app").hidden = false;
  $("signin-error").textContent = "";
  client = new ChatClient({
    url: wsUrl(),
    token: session.token ?? null,
    guest: session.guest ?? null,
    backoff: backoffFromQuery(),
    refreshToken: password ? () => renewToken() : null,
  });
  let directLoaded = false;
  client.on("state", () => {
    updateBanner();
    if (client.state === "connected") refreshRoomsSoon();
    if (client.state === "connected" && me && !me.guest && !directLoaded) {
      directLoaded = true;
      loadRecentDirect();
    }
    if (client.state === "closed" && !client.everConnected) {
      const reason = client.closedReason;
      signOut(true);
      $("signin-error").textContent = reason;
    }
  });
  client.on("outbox", updateBanner);
  client.on("user", (user) => {
    me = user;
    $("me").textContent = `${visibleName(user.name)}${user.guest ? " (guest)" : ""}`;
    $("dm-section").hidden = user.guest;
    $("private-fields").hidden = user.guest;
    $("attach-label").hidden = user.guest;
    $("file").disabled = user.guest;
    updateBanner();
  });
  client.on("joined", (p) => {
    const c = conv(`#${p.room}`);
    c.joined = true;
    c.members = new Set((p.members ?? []).map(String));
    c.memberCount = Number(p.member_count ?? c.members.size);
    if (!current && p.room === LOBBY) show(c);
    else if (c === current) {
      renderMembers();
      if (!c.loaded) loadOlder(c);
    }
    renderNav();
  });
  client.on("left", (p) => {
    if (p.error) showError(`You are no longer in #${p.room}: ${p.error.message}`);
    else if (p.reason) showError(`You are no longer in #${p.room}: ${p.reason}`);
  });
  client.on("message", (item) => addItem(conv(`#${item.room}`), item, true));
  client.on("direct", (item) => addDirect(item, true));
  client.on("presence", (p) => {
    const c = convs.get(`#${p.room}`);
    if (!c) return;
    if (p.event === "join") c.members.add(String(p.user));
    else if (p.event === "leave") {
      c.members.delete(String(p.user));
      c.typing.delete(String(p.user));
    }
    if (c === current) {
      renderMembers();
      renderTyping();
    }
    renderNav();
    refreshRoomsSoon();
  });
  client.on("typing", (p) => {
    const c = convs.get(`#${p.room}`);
    if (!c || (me && p.user === me.name)) return;
    c.typing.set(String(p.user), Date.now() + TYPING_SHOWN);
    if (c === current) renderTyping();
    setTimeout(() => c === current && renderTyping(), TYPING_SHOWN + 50);
  });
  client.on("acked", onAcked);
  client.on("failed", onFailed);
  client.on("servererror", (p) => {
    if (p.code === "token_expired") return; // the "expired" event says it
    showError(`${p.code}: ${p.message}`);
  });
  client.on("expired", () => {
    const banner = $("banner");
    banner.dataset.expired = "true";
    $("resign").hidden = false;
    showError("Your session has expired. Sign in again to keep chatting.");
  });
  client.start();
  scheduleRefresh();
  refreshRooms();
  clearInterval(roomsTimer);
  roomsTimer = setInterval(refreshRooms, 15000);
  updateBanner();
}

function signOut(forget = true) {
  if (client) {
    const old = client;
    client = null;
    old.close("signed out");
  }
  clearTimeout(refreshTimer);
  clearInterval(roomsTimer);
  clearTimeout(bannerTimer);
  for (const c of convs.values()) c.list.remove();
  convs.clear();
  current = null;
  me = null;
  apiRooms = [];
  const name = session?.name ?? "";
  const guestName = session?.guest ?? "";
  if (forget) {
    session = null;
    password = null;
    saveSession();
  }
  $("app").hidden = true;
  $("signin").hidden = false;
  $("login-name").value = name;
  $("guest-name").value = guestName;
  $("errors").replaceChildren();
  delete $("banner").dataset.expired;
}

// -- sending -------------------------------------------------------------------------

function sendText(text) {
  const c = current;
  if (!c || !client) return;
  try {
    const { id } = c.type === "room" ? client.sendChat(c.name, text) : client.sendDirect(c.name, text);
    addPending(c, id, "text", text);
  } catch (err) {
    showError(`Not sent: ${err.serverMessage ?? err.message}`);
  }
  updateBanner();
}

async function sendFiles(files) {
  const c = current;
  if (!c || !client) return;
  if (!me || me.guest) {
    showError("Sign in to send files: guests cannot.");
    return;
  }
  for (const file of files) {
    if (file.size > MAX_FILE) {
      showError(`${visibleName(file.name, "file")} is larger than ${formatSize(MAX_FILE)}.`);
      continue;
    }
    try {
      const bytes = await file.arrayBuffer();
      const target = c.type === "room" ? { room: c.name } : { to: c.name };
      const { id } = client.sendFile(target, file.name, file.type, bytes);
      addPending(c, id, "file", "", file.name);
    } catch (err) {
      showError(`${visibleName(file.name, "file")} not sent: ${err.serverMessage ?? err.message}`);
    }
  }
  updateBanner();
}

// -- sidebar on small screens ------------------------------------------------------------

function closeSidebar() {
  $("sidebar").classList.remove("open");
  $("menu").setAttribute("aria-expanded", "false");
}

// -- wiring ------------------------------------------------------------------------------

function wire() {
  $("guest-form").addEventListener("submit", (event) => {
    event.preventDefault();
    session = { guest: $("guest-name").value.trim() };
    password = null;
    saveSession();
    start();
  });
  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = event.submitter;
    if (button) button.disabled = true;
    try {
      const pass = $("login-password").value;
      session = await login($("login-name").value.trim(), pass);
      password = pass;
      $("login-password").value = "";
      saveSession();
      start();
    } catch (err) {
      $("signin-error").textContent = `Sign-in failed: ${err.message}`;
    } finally {
      if (button) button.disabled = false;
    }
  });
  $("register-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = event.submitter;
    if (button) button.disabled = true;
    const name = $("register-name").value.trim();
    const pass = $("register-password").value;
    try {
      await api("POST", "/api/register", { username: name, password: pass }, null);
      session = await login(name, pass);
      password = pass;
      $("register-password").value = "";
      saveSession();
      start();
    } catch (err) {
      $("signin-error").textContent = `Registration failed: ${err.message}`;
    } finally {
      if (button) button.disabled = false;
    }
  });
  $("signout").addEventListener("click", () => signOut(true));
  $("resign").addEventListener("click", () => signOut(true));
  $("retry").addEventListener("click", () => client?.reconnectNow());
  window.addEventListener("online", () => client?.reconnectNow());
  window.addEventListener("offline", updateBanner);

  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("text").value;
    if (!text.trim()) return;
    sendText(text);
    $("text").value = "";
  });
  $("text").addEventListener("input", () => {
    if (!current || current.type !== "room" || !client || !$("text").value) return;
    const now = Date.now();
    if (now - (lastTyping.get(current.name) ?? 0) >= TYPING_EVERY) {
      lastTyping.set(current.name, now);
      client.typing(current.name);
    }
  });
  $("file").addEventListener("change", () => {
    const files = [...$("file").files];
    $("file").value = "";
    sendFiles(files);
  });
  const scroller = $("scroller");
  scroller.addEventListener("dragover", (event) => {
    if (![...(event.dataTransfer?.types ?? [])].includes("Files")) return;
    event.preventDefault();
    scroller.classList.add("dropping");
  });
  scroller.addEventListener("dragleave", () => scroller.classList.remove("dropping"));
  scroller.addEventListener("drop", (event) => {
    event.preventDefault();
    scroller.classList.remove("dropping");
    sendFiles([...(event.dataTransfer?.files ?? [])]);
  });
  scroller.addEventListener("scroll", () => {
    if (scroller.scrollTop < 40 && current?.loaded) loadOlder(current);
  });
  $("rooms-refresh").addEventListener("click", refreshRooms);
  $("older").addEventListener("click", () => current && loadOlder(current));
  $("leave").addEventListener("click", leaveCurrent);
  $("members-toggle").addEventListener("click", () => {
    const hidden = $("members-pane").classList.toggle("collapsed");
    $("members-toggle").setAttribute("aria-expanded", String(!hidden));
  });
  $("menu").addEventListener("click", () => {
    const open = $("sidebar").classList.toggle("open");
    $("menu").setAttribute("aria-expanded", String(open));
    if (open) {
      refreshRooms();
      $("sidebar").querySelector("button, input")?.focus();
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && $("sidebar").classList.contains("open")) {
      closeSidebar();
      $("menu").focus();
    }
  });
  $("room-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = $("room-name").value.trim().toLowerCase();
    const isPrivate = $("room-private").checked && me && !me.guest;
    if (isPrivate) {
      const members = $("room-members").value.split(/[\s,]+/).filter(Boolean);
      try {
        await api("POST", "/api/rooms", { name, private: true, members });
      } catch (err) {
        if (err.code !== "room_exists") {
          showError(`Cannot create ${name}: ${err.message}`);
          return;
        }
      }
    }
    $("room-name").value = "";
    $("room-members").value = "";
    $("room-private").checked = false;
    await openRoom(name);
  });
  $("dm-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = $("dm-name").value.trim();
    $("dm-name").value = "";
    if (name) openDm(name);
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && client) refreshRooms();
    if (!document.hidden && current && current.unread) {
      current.unread = 0;
      renderNav();
    }
  });
}

wire();
session = loadSession();
if (session) start();
else $("guest-name").focus();
