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
// `@name` as the server reads it: letters, digits, _, - and . after a start or a space.
const MENTION_RE = /(^|[^\p{L}\p{N}_.@-])@([\p{L}\p{N}_.-]+)/gu;
const COMMON_EMOJI = ["👍", "❤️", "😂", "🎉", "😮", "😢", "🙏", "👀"];
const QUOTE_CHARS = 100;
// Opening a message (a search result): the page read around it, and the pages
// that fill the gap after it (`around` the gap's first seq: half of such a
// page is shown already, so it is the largest page the server gives).
const AROUND_PAGE = 50;
const NEWER_PAGE = 100;
const SEARCH_PAGE = 20;

let client = null;
let me = null; // {name, guest}
// {token, expiresAt, refreshToken, refreshExpiresAt, name, admin} or {guest}. The
// password is never kept: the refresh token renews the access token (each use
// gives a new one; the server revokes the whole session if a used one comes back).
let session = null;
let refreshTimer = null;
let refreshing = null; // the refresh under way: one at a time, or a rotated token would be used twice
let roomsTimer = null;
let bannerTimer = null;
let current = null;
const convs = new Map(); // "#room" or "@user" -> conversation
let apiRooms = []; // from GET /api/rooms
const lastTyping = new Map();
// Every message shown, by id: its current state and the elements showing it
// (the conversation, the thread pane). Changes update the record, then its elements.
const records = new Map();
// Changes to messages not shown (yet): applied, in order, if they are.
const orphans = new Map();
const ORPHANS_KEPT = 2000;
let orphanCount = 0;
let popup = null; // the open message menu or reaction picker: {box, opener, li}
let replying = null; // {c, r}: the message the next one answers
let thread = null; // the thread pane: {c, rootId, items, seqs, pending, hasMore, loading}
let toDelete = null; // {r, li}: waiting for the confirmation
// Read markers: what was on screen while the tab was visible and focused is read.
const READ_EVERY = 800; // ms: a conversation's `read` goes at most this often
let seenObserver = null; // an IntersectionObserver on the messages of the conversations
const onScreen = new Set(); // message <li>s (mostly) inside the scroller
const dmSeen = new Map(); // peer -> the seq of my direct stream they have read (receipts)
const leftRooms = new Set(); // rooms left on this page: their counts are not shown
let directCoveredFrom = Infinity; // every direct message from this seq on is shown
let settings = null; // {hide_receipts}: GET /api/me/settings (registered users)
let unreadSoon = null;
// Gaps: stretches between pages shown where messages may be missing
// ({after, before}: seqs shown or live on either side). A room has its own
// (`c.gaps`); direct conversations share the direct stream's.
let directGaps = [];
let search = null; // the search shown: {q, filters, cursor, count, loading}
// Moderation: each room's settings, roles and (for its moderators) bans and
// mutes, from GET /api/rooms/{room} and `room` frames; when this user may
// send again where they are muted or slowed down.
const details = new Map(); // room -> the `room` object (role, topic, title, slow_mode, ...)
const detailsLoading = new Map(); // room -> the request under way
const mutedUntil = new Map(); // room -> ms
const slowUntil = new Map(); // room -> ms
const goneRooms = new Set(); // rooms this user was taken out of: not listed until joined again
let clockTimer = null; // once a second: the countdowns in the composer
let sidePane = null; // "room" or "account": the settings pane shown
let audit = null; // the audit log shown: {room, before, hasMore, loading}

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

/**
 * Text with its http(s) URLs as links and the `@name`s of `mentions` marked;
 * every piece is a text node, an <a> or a <span> we build.
 */
function richText(text, mentions = []) {
  const frag = document.createDocumentFragment();
  const named = new Set(mentions.map((n) => n.toLowerCase()));
  const plain = (part) => frag.append(named.size ? mentionText(part, named) : part);
  let last = 0;
  for (const match of text.matchAll(URL_RE)) {
    const raw = match[0].replace(/[.,;:!?)\]}'"]+$/, "");
    plain(text.slice(last, match.index));
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
  plain(text.slice(last));
  return frag;
}

/** `@name`s of the mentioned users as spans (yours marked), the rest as text. */
function mentionText(text, named) {
  const frag = document.createDocumentFragment();
  let last = 0;
  for (const match of text.matchAll(MENTION_RE)) {
    const name = match[2].replace(/\.+$/, "");
    if (!named.has(name.toLowerCase())) continue;
    const start = match.index + match[1].length;
    frag.append(text.slice(last, start));
    const you = me && name.toLowerCase() === me.name.toLowerCase();
    frag.append(el("span", { class: `mention${you ? " you" : ""}`, text: `@${name}` }));
    last = start + 1 + name.length;
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
    mentionCount: 0,
    lastRead: null, // the marker: a room seq, or a seq of my direct stream (null: not known yet)
    readSent: 0, // the highest marker sent or heard from the server
    readTimer: null,
    counted: 0, // live messages up to this seq are in the counts already
    coveredFrom: Infinity, // every message from this seq on is in `items` (rooms)
    gaps: [], // rooms: where messages may be missing between pages shown (see placePage)
    lineAfter: null, // the "new messages" line follows this seq (set when opened)
    receipts: new Map(), // rooms: reader -> the seq they have read up to
    readCounts: new Map(), // big rooms: seq -> how many have read it
    receiptLi: null, // the <li> showing the receipt line
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

// -- messages and their records ---------------------------------------------------

function isMine(r) {
  return Boolean(me && r.from === me.name);
}

function mentionsMe(r) {
  if (!me || me.guest || isMine(r) || r.deleted) return false;
  const name = me.name.toLowerCase();
  return (r.mentions ?? []).some((n) => n.toLowerCase() === name);
}

function roomInfo(name) {
  return apiRooms.find((r) => r.name === name) ?? null;
}

/** May this user delete the message: theirs, or anyone's in a room they own or moderate (or as an admin). */
function canDelete(r) {
  if (!me || r.deleted) return false;
  if (isMine(r)) return true;
  const c = convs.get(r.convKey);
  if (c?.type !== "room") return false;
  if (moderates(c.name)) return true;
  const info = roomInfo(c.name);
  return Boolean(info?.private && info.owner === me.name);
}

/** The record of a message (made on first sight; changes that came first are applied). */
function recordOf(c, item) {
  let r = records.get(item.messageId);
  if (r) return r;
  r = {
    ...item,
    reactions: new Map(item.reactions ?? []),
    mentions: [...(item.mentions ?? [])],
    convKey: c.key,
    els: new Set(),
    saving: false,
  };
  if (r.replyTo && !r.quote) {
    // A replayed reply may come without its quote: the answered message, if shown, gives it.
    const answered = records.get(r.replyTo);
    if (answered) r.quote = answered.deleted ? { from: answered.from, message: "", deleted: true } : quoteOf(answered);
  }
  records.set(item.messageId, r);
  const waiting = orphans.get(item.messageId);
  if (waiting) {
    orphans.delete(item.messageId);
    orphanCount -= waiting.length;
    for (const change of waiting) applyTo(r, change);
  }
  return r;
}

function forgetRecords(key) {
  for (const [id, r] of records) if (r.convKey === key) records.delete(id);
}

/** An <li> for a message: slots filled from its record (or, while pending, from the item). */
function messageLi(c, item, mine, inThread = false) {
  const li = el("li", { class: `msg${mine ? " mine" : ""}`, dataTestid: "msg", dataFrom: item.from });
  const when = item.timestamp ? new Date(item.timestamp) : new Date();
  li.dataset.day = when.toDateString();
  li.dataset.dayLabel = dayLabel(when);
  li.when = when;
  li.inThread = inThread;
  li.rec = null;
  li.editing = null;
  const meta = el("div", { class: "meta" });
  li.slots = {
    info: el("span", { class: "info" }),
    quote: el("div", { class: "quote-slot" }),
    body: el("div", { class: "body", dataTestid: "body" }),
    reactions: el("div", { class: "reactions", role: "group", ariaLabel: "Reactions" }),
    footer: el("div", { class: "footer" }),
    receipt: el("div", { class: "receipt", dataTestid: "receipt" }),
  };
  meta.append(li.slots.info);
  li.append(meta, li.slots.quote, li.slots.body, li.slots.reactions, li.slots.footer, li.slots.receipt);
  if (item.messageId) bind(c, li, item);
  else renderMsg(li, item);
  return li;
}

/** Show `item`'s record in `li` from now on (its changes update it). */
function bind(c, li, item) {
  const r = recordOf(c, item);
  li.rec = r;
  r.els.add(li);
  li.dataset.messageId = r.messageId;
  if (!li.tools) {
    li.tools = messageTools(li);
    li.querySelector(".meta").append(li.tools);
  }
  if (li.author === undefined) {
    // The author's name opens the member menu (a direct message; moderation for moderators).
    li.author = c.type === "room" && me && !me.guest && r.from !== me.name
      ? memberButton(li, c.name, r.from, { className: "from author", testid: "author", text: visibleName(r.from) })
      : null;
  }
  renderMsg(li, r);
  return r;
}

/** The buttons on a message: add a reaction, and the menu of everything else. */
function messageTools(li) {
  const tools = el("div", { class: "tools" });
  const react = el("button", { type: "button", class: "quiet small tool", text: "☺+", dataTestid: "react-open", ariaLabel: "Add a reaction", title: "Add a reaction" });
  react.addEventListener("click", () => (popup?.opener === react ? closePopup(true) : openPicker(li, react)));
  const more = el("button", {
    type: "button", class: "quiet small tool", text: "⋯", dataTestid: "msg-menu", title: "More actions",
    ariaLabel: `Actions for the message from ${visibleName(li.rec?.from)}`, ariaHaspopup: "menu", ariaExpanded: "false",
  });
  more.addEventListener("click", () => (popup?.opener === more ? closePopup(true) : openMenu(li, more)));
  more.addEventListener("keydown", (event) => {
    if (event.key === "ArrowDown" && popup?.opener !== more) {
      event.preventDefault();
      openMenu(li, more);
    }
  });
  tools.append(react, more);
  return tools;
}

/** Fill `li` from `r`; the edit box, the tools and a focused chip survive. */
function renderMsg(li, r) {
  const { info, quote, body, reactions, footer } = li.slots;
  const deleted = Boolean(r.deleted);
  li.classList.toggle("deleted", deleted);
  li.classList.toggle("mentioned", mentionsMe(r));
  if (deleted) li.dataset.deleted = "true";
  else delete li.dataset.deleted;
  info.replaceChildren(li.author ?? el("span", { class: "from", text: visibleName(r.from) }));
  const when = li.when;
  info.append(el("time", { dateTime: when.toISOString(), text: when.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" }), title: when.toLocaleString() }));
  if (!deleted && (r.editedAt || r.saving)) {
    const edited = el("span", { class: "edited", dataTestid: "edited", text: r.saving ? "(saving…)" : "(edited)" });
    edited.title = r.editedAt ? `edited ${new Date(r.editedAt).toLocaleString()}` : "waiting for the server";
    info.append(edited);
  }
  if (mentionsMe(r)) info.append(el("span", { class: "you-tag", dataTestid: "mentions-you", text: "mentions you" }));
  info.append(el("span", { class: "status", dataTestid: "status" }));
  showStatus(li);
  if (li.tools) li.tools.hidden = deleted;

  quote.replaceChildren();
  // In the thread pane a reply to the root needs no quote: the root is right above.
  if (r.quote && !deleted && !(li.inThread && r.replyTo && r.replyTo === r.thread)) quote.append(quoteButton(li, r));

  if (deleted && li.editing) li.editing = null;
  if (!li.editing) {
    if (deleted) body.replaceChildren(el("em", { class: "tombstone", dataTestid: "tombstone", text: "message deleted" }));
    else if (r.file) body.replaceChildren(fileBody(r.file));
    else body.replaceChildren(richText(r.text ?? "", r.mentions ?? []));
  }

  const focused = reactions.contains(document.activeElement) ? document.activeElement.dataset.emoji : null;
  reactions.replaceChildren();
  if (!deleted && r.reactions) {
    for (const [emoji, names] of r.reactions) reactions.append(reactionChip(r, emoji, names));
  }
  if (focused) [...reactions.children].find((b) => b.dataset.emoji === focused)?.focus();

  footer.replaceChildren();
  const c = convs.get(r.convKey);
  if (!li.inThread && c?.type === "room" && r.replyCount > 0) {
    const replies = el("button", { type: "button", class: "quiet small replies", dataTestid: "replies", text: `💬 ${plural(r.replyCount, "reply", "replies")}` });
    replies.setAttribute("aria-label", `Open the thread: ${plural(r.replyCount, "reply", "replies")}`);
    replies.addEventListener("click", () => openThread(c, r.messageId));
    footer.append(replies);
  }
}

function quoteButton(li, r) {
  const q = r.quote;
  const button = el("button", { type: "button", class: "quote", dataTestid: "quote" });
  button.append(el("span", { class: "quote-from", text: `↪ ${visibleName(q.from)}` }));
  if (q.deleted) button.append(el("em", { class: "quote-text", text: "message deleted" }));
  else button.append(el("span", { class: "quote-text", text: q.message }));
  const root = r.thread ?? r.replyTo;
  if (!root || li.inThread || !li.rec) {
    button.disabled = !li.rec || li.inThread;
  } else {
    button.setAttribute("aria-label", `In reply to ${visibleName(q.from)}: ${q.deleted ? "message deleted" : q.message}. Open the thread`);
    button.addEventListener("click", () => openThread(convs.get(r.convKey), root));
  }
  return button;
}

function reactionChip(r, emoji, names) {
  const mineToo = Boolean(me && names.includes(me.name));
  const shown = names.map((n) => visibleName(n));
  const chip = el("button", { type: "button", class: `chip${mineToo ? " own" : ""}`, dataTestid: "reaction", dataEmoji: emoji, ariaPressed: String(mineToo) });
  chip.append(el("span", { class: "chip-emoji", text: emoji }), el("span", { class: "chip-count", dataTestid: "reaction-count", text: String(names.length) }));
  chip.title = `${shown.join(", ")} reacted with ${emoji}`;
  chip.setAttribute("aria-label", `${emoji} ${names.length}: ${shown.join(", ")}. ${mineToo ? "Remove your reaction" : "Add yours"}`);
  chip.addEventListener("click", () => toggleReaction(r, emoji));
  return chip;
}

/** Re-show a record everywhere it is shown. */
function refresh(r) {
  for (const li of [...r.els]) {
    if (li.isConnected) renderMsg(li, r);
    else r.els.delete(li);
  }
}

function setStatus(li, state, text = "") {
  li.dataset.state = state;
  li.statusText = text;
  showStatus(li);
}

function showStatus(li) {
  const status = li.querySelector(".status");
  const state = li.dataset.state;
  if (!status) return;
  const text = li.statusText;
  status.textContent = text || { sending: "sending…", acked: "✓", failed: "not sent" }[state] || "";
  status.title = { sending: "waiting for the server", acked: "stored by the server" }[state] || text || "";
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
    placeNewLine(c);
    renderReceipts(c);
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
  seenObserver?.observe(li);
  fixDaysSoon(c);
}

/** A message from a stream or a history page; `live`: it just happened. */
function addItem(c, item, live) {
  const have = c.items.get(item.seq);
  if (have) {
    // Placed by its ack before it came: show it from its record from now on.
    if (!have.rec && item.messageId) bind(c, have, item);
    return;
  }
  const mine = me && item.from === me.name;
  if (live) onNewMessage(c, item);
  if (mine && live) {
    const kind = item.file ? "file" : "text";
    const p = c.pending.find((x) => x.seq === undefined && x.kind === kind && (kind === "file" || x.text === item.text));
    if (p) {
      p.seq = item.seq;
      const bottom = nearBottom();
      const li = messageLi(c, item, true);
      setStatus(li, "sending");
      p.li.remove();
      p.li = li;
      place(c, item.seq, li);
      if (bottom) scrollToBottom();
      return;
    }
  }
  const bottom = nearBottom();
  const li = messageLi(c, item, mine);
  place(c, item.seq, li);
  if (live) {
    if (mine) {
      setStatus(li, "acked");
      sentUpTo(c, item.seq); // sent from another device of mine: read there
    } else countLive(c, li.rec ?? item);
    if (c === current && (bottom || mine)) scrollToBottom();
  }
}

/** A reply that just came: the root counts it, an open thread shows it. */
function onNewMessage(c, item) {
  if (!item.thread || item.thread === item.messageId) return;
  const root = records.get(item.thread);
  if (root && root.convKey === c.key) {
    root.replyCount += 1;
    refresh(root);
  }
  if (thread && thread.c === c && thread.rootId === item.thread) addThreadItem(item);
}

function addPending(c, id, kind, text, fileName = null, quote = null) {
  const item = { from: me.name, text, file: null, timestamp: null, quote };
  const li = messageLi(c, item, true);
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
  sentUpTo(c, seq);
  updateBanner();
}

/** Sending reads: the server moved the marker to this message (and says nothing). */
function sentUpTo(c, seq) {
  if (Number.isInteger(seq) && (c.lastRead === null || seq > c.lastRead)) {
    c.lastRead = seq;
    c.readSent = Math.max(c.readSent, seq);
    recount(c);
    renderNav();
  }
}

function onFailed({ id, code, message, room, details: extra }) {
  const [c, p] = findPending(id);
  if (p) {
    c.pending.splice(c.pending.indexOf(p), 1);
    setStatus(p.li, "failed", code === "muted" ? "not sent: you are muted" : `not sent: ${message || code}`);
    p.li.classList.add("failed");
  }
  if (code === "muted" && (room ?? (c?.type === "room" ? c.name : null))) {
    // The composer says it, and stays closed until then.
    setMuted(room ?? c.name, extra?.until ?? null);
    const inThread = thread?.pending.find((x) => x.id === id);
    if (inThread) {
      thread.pending.splice(thread.pending.indexOf(inThread), 1);
      setStatus(inThread.li, "failed", "not sent: you are muted");
      inThread.li.classList.add("failed");
    }
    updateBanner();
    return;
  }
  const inThread = thread?.pending.find((x) => x.id === id);
  if (inThread) {
    thread.pending.splice(thread.pending.indexOf(inThread), 1);
    setStatus(inThread.li, "failed", `not sent: ${message || code}`);
    inThread.li.classList.add("failed");
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
      // Pages go back from the newest: with the live messages they are one
      // run, unless a gap (left by opening a message from search) parts them.
      if (!c.gaps.length) {
        if (!page.hasMore) c.coveredFrom = 0;
        else if (page.messages.length) c.coveredFrom = Math.min(c.coveredFrom, page.messages[0].seq);
      }
      takeReceipts(c, page);
      if (c === current) {
        if (before === null) scrollToStart(c);
        else s.scrollTop = top + (s.scrollHeight - height);
      }
    } else {
      // Direct messages are one stream for all conversations: page through it.
      const oldest = Math.min(...[...convs.values()].filter((x) => x.type === "dm" && x.seqs.length).map((x) => x.seqs[0]), Infinity);
      const page = await client.directHistory({ before: Number.isFinite(oldest) ? oldest : null, limit: 100 });
      const height = s.scrollHeight;
      const top = s.scrollTop;
      for (const item of page.messages) addDirect(item, false);
      for (const x of convs.values()) if (x.type === "dm") x.hasMore = page.hasMore;
      takeDirectPage(page);
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
    if (!page.hasMore) directCoveredFrom = 0;
    else directCoveredFrom = Math.min(directCoveredFrom, page.messages.length ? page.messages[0].seq : Number(page.lastSeq ?? 0) + 1);
    takeDirectPage(page);
    if (current?.type === "dm") scrollToStart(current);
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

// -- opening a message: pages around it, and the gaps they leave ----------------------

/** The gaps of `c`'s stream: the room's own, or the direct stream's. */
function gapsOf(c) {
  return c.type === "dm" ? directGaps : c.gaps;
}

/** The conversations showing a stream's gaps: the room, or every direct conversation. */
function streamConvs(c) {
  return c.type === "dm" ? [...convs.values()].filter((x) => x.type === "dm") : [c];
}

/** Every seq shown of `c`'s stream, in order (all direct conversations share one). */
function shownSeqs(c) {
  if (c.type !== "dm") return [...c.seqs];
  return streamConvs(c).flatMap((x) => x.seqs).sort((a, b) => a - b);
}

function setGaps(c, gaps) {
  if (c.type === "dm") directGaps = gaps;
  else c.gaps = gaps;
}

/**
 * The gaps once a page of every message from `lo` to `hi` is shown: gaps it
 * covers close, gaps it lands in split, and a page beside what is shown
 * leaves a gap on the side where it says more messages exist (`hasMore`
 * older ones, `hasNewer` newer ones). `top`: every message from this seq on
 * is shown or comes live. Seqs of changes are holes in pages, so two pages
 * are only known to join when they overlap; a gap that was none closes the
 * first time it is loaded.
 */
function mergedGaps(gaps, shown, lo, hi, { hasMore, hasNewer }, top) {
  const out = [];
  let landed = false;
  for (const g of gaps) {
    if (hi <= g.after || lo >= g.before) {
      out.push(g);
      continue;
    }
    landed = true;
    if (hasMore && lo > g.after) out.push({ after: g.after, before: lo });
    if (hasNewer && hi < g.before) out.push({ after: hi, before: g.before });
  }
  if (!landed && !shown.some((seq) => seq >= lo && seq <= hi)) {
    const below = shown.filter((seq) => seq < lo).at(-1);
    const above = shown.find((seq) => seq > hi) ?? top;
    if (hasMore && below !== undefined) out.push({ after: below, before: lo });
    if (hasNewer && above > hi) out.push({ after: hi, before: above });
  }
  // Nothing is older than a page without `hasMore`, nothing newer than one without `hasNewer`.
  return out.filter((g) => (hasMore || g.before > lo) && (hasNewer || g.after < hi)).sort((a, b) => a.after - b.after);
}

/**
 * Show a history page read anywhere in a conversation (around a message,
 * the newest, or filling a gap), keeping its gaps: a room whose pages all
 * join the live messages again is one run from its first message shown.
 */
function placePage(c, page) {
  const items = page.messages;
  const dm = c.type === "dm";
  if (items.length) {
    const shown = shownSeqs(c);
    const lo = items[0].seq;
    const hi = items[items.length - 1].seq;
    setGaps(c, mergedGaps(gapsOf(c), shown, lo, hi, page, dm ? directCoveredFrom : c.coveredFrom));
    if (!shown.length || lo < shown[0]) {
      for (const x of streamConvs(c)) x.hasMore = page.hasMore;
    }
    for (const item of items) {
      if (dm) addDirect(item, false);
      else addItem(c, item, false);
    }
  }
  if (dm) {
    takeDirectPage(page);
  } else {
    if (!c.gaps.length) c.coveredFrom = Math.min(c.coveredFrom, c.hasMore ? (c.seqs[0] ?? Infinity) : 0);
    takeReceipts(c, page);
  }
  renderGaps(c);
  renderOlder();
}

/** A line in each conversation of the stream where a gap is, after its last message before it. */
function renderGaps(c) {
  for (const x of streamConvs(c)) {
    for (const old of x.list.querySelectorAll(":scope > .gap")) old.remove();
    for (const g of gapsOf(c)) {
      let at = null;
      for (const seq of x.seqs) {
        if (seq > g.after) break;
        at = seq;
      }
      if (at !== null) x.items.get(at).after(gapLi(x, g));
    }
  }
}

function gapLi(c, g) {
  const li = el("li", { class: "gap", dataTestid: "gap" });
  li.gap = g;
  const newer = el("button", { type: "button", class: "quiet small", dataTestid: "load-newer", text: c.loading ? "Loading…" : "Load newer messages", disabled: c.loading });
  newer.addEventListener("click", () => loadNewer(c, g));
  const newest = el("button", { type: "button", class: "quiet small", dataTestid: "jump-newest", text: "Jump to the newest", disabled: c.loading });
  newest.addEventListener("click", () => jumpToNewest(c));
  li.append(newer, newest);
  return li;
}

/** Until `c` is not loading a page any more (at most a few seconds). */
async function settled(c) {
  for (let i = 0; i < 100 && c.loading; i += 1) await new Promise((ok) => setTimeout(ok, 50));
}

/** The page of `c` around `seq` (a room's seq, or one of the user's direct stream). */
async function loadAround(c, seq) {
  c.loading = true;
  renderOlder();
  try {
    const page = c.type === "room"
      ? await client.history(c.name, null, AROUND_PAGE, { around: seq })
      : await client.directHistory({ around: seq, limit: AROUND_PAGE });
    if (convs.get(c.key) === c) placePage(c, page);
  } catch (err) {
    showError(`Could not load the conversation: ${err.serverMessage ?? err.message}`);
  } finally {
    c.loading = false;
    c.loaded = true;
    renderOlder();
    if (convs.get(c.key) === c) renderGaps(c);
  }
}

/** Fill a gap from its start: scrolling down reaches the newer messages. */
async function loadNewer(c, g) {
  if (!client || c.loading || !gapsOf(c).includes(g)) return;
  c.loading = true;
  renderGaps(c);
  let filled = false;
  try {
    const around = g.after + 1;
    const page = c.type === "room"
      ? await client.history(c.name, null, NEWER_PAGE, { around })
      : await client.directHistory({ around, limit: NEWER_PAGE });
    if (convs.get(c.key) !== c) return;
    // Nothing after its start: only seqs of changes were there.
    if (!page.messages.some((m) => m.seq > g.after)) setGaps(c, gapsOf(c).filter((x) => x !== g));
    placePage(c, page);
    filled = true;
  } catch (err) {
    showError(`Could not load newer messages: ${err.serverMessage ?? err.message}`);
  } finally {
    c.loading = false;
    if (convs.get(c.key) === c) renderGaps(c);
  }
  if (filled) requestAnimationFrame(loadNewerInView);
}

/** The newest page of `c`, below its gaps, and scroll to it. */
async function jumpToNewest(c) {
  if (!client || c.loading) return;
  c.loading = true;
  renderGaps(c);
  try {
    const page = c.type === "room" ? await client.history(c.name, null, AROUND_PAGE) : await client.directHistory({ limit: NEWER_PAGE });
    if (convs.get(c.key) === c) placePage(c, { ...page, hasNewer: false });
  } catch (err) {
    showError(`Could not load the newest messages: ${err.serverMessage ?? err.message}`);
  } finally {
    c.loading = false;
    if (convs.get(c.key) === c) renderGaps(c);
  }
  if (c === current) scrollToBottom();
}

/** A gap scrolled into view loads what it hides. */
function loadNewerInView() {
  const c = current;
  if (!c || c.loading) return;
  const view = $("scroller").getBoundingClientRect();
  for (const li of c.list.querySelectorAll(":scope > .gap")) {
    const box = li.getBoundingClientRect();
    if (box.top < view.bottom + 100 && box.bottom > view.top - 100) {
      loadNewer(c, li.gap);
      return;
    }
  }
}

/**
 * Open a conversation at one of its messages (a search result): the page
 * around it is read when it is not shown, then it is scrolled to and marked.
 * `key` is "#room" or "@peer"; `seq` the room's, or the user's direct stream's.
 */
async function openAt(key, seq, messageId) {
  if (!client) return;
  const room = key[0] === "#";
  if (!room && (!me || me.guest)) return;
  const c = conv(key);
  await settled(c);
  const needed = !c.items.has(seq);
  // The page around the message is the first this conversation loads: opening must not load the newest.
  if (needed) c.loading = true;
  if (room) {
    await openRoom(c.name);
    if (!c.joined || convs.get(key) !== c) {
      c.loading = false;
      return;
    }
  } else {
    openDm(c.name);
  }
  if (needed) await loadAround(c, seq);
  if (c === current && !flashMessage(messageId)) showError("That message is no longer there.");
}

// -- changes: edits, deletions, reactions, mentions --------------------------------

/** Apply one change to a record (idempotent: a change seen twice changes nothing more). */
function applyTo(r, ch) {
  if (ch.kind === "edit") {
    if (r.deleted) return;
    r.text = ch.text;
    r.editedAt = ch.editedAt;
  } else if (ch.kind === "delete") {
    r.deleted = true;
    r.text = "";
    r.file = null;
    r.quote = null;
    r.reactions = new Map();
  } else if (ch.kind === "reaction") {
    if (r.deleted) return;
    const names = r.reactions.get(ch.emoji) ?? [];
    const has = names.includes(ch.user);
    if (ch.added && !has) r.reactions.set(ch.emoji, [...names, ch.user]);
    else if (!ch.added && has) {
      const left = names.filter((n) => n !== ch.user);
      if (left.length) r.reactions.set(ch.emoji, left);
      else r.reactions.delete(ch.emoji);
    }
  }
}

/** A change from a room's stream or the direct stream, in that stream's order. */
function onChange(ch) {
  const r = records.get(ch.messageId);
  if (!r) {
    // Not shown (yet): a history page read before the change may bring it.
    if (!orphans.has(ch.messageId)) orphans.set(ch.messageId, []);
    orphans.get(ch.messageId).push(ch);
    orphanCount += 1;
    while (orphanCount > ORPHANS_KEPT) {
      const [oldest, list] = orphans.entries().next().value;
      orphans.delete(oldest);
      orphanCount -= list.length;
    }
    return;
  }
  applyTo(r, ch);
  if (ch.kind === "edit" && isMine(r)) r.saving = false;
  if (ch.kind === "delete") {
    for (const li of r.els) if (popup?.li === li) closePopup(false);
    if (replying?.r === r) setReplying(null);
  }
  refresh(r);
  const c = convs.get(r.convKey);
  if (ch.kind === "delete" && c) {
    if (recount(c)) renderNav();
    renderReceipts(c);
  }
}

/** Messages shown before a long absence, as they are now. */
function onRefreshed({ messages }) {
  for (const item of messages) {
    const r = records.get(item.messageId);
    if (!r) continue;
    Object.assign(r, {
      text: item.text,
      file: item.file,
      deleted: item.deleted,
      editedAt: item.editedAt,
      reactions: new Map(item.reactions),
      replyCount: item.replyCount,
      quote: item.quote,
    });
    refresh(r);
  }
}

/** Someone named this user (`mention` on the direct stream). */
function onMention(m) {
  const c = convs.get(`#${m.mentionIn}`);
  if (c?.joined) return; // the message itself comes, and counts
  showNotice(`${visibleName(m.from)} mentioned you in #${m.mentionIn}`, `Open #${m.mentionIn}`, async () => {
    await openRoom(m.mentionIn);
    for (let i = 0; i < 20 && !flashMessage(m.messageId); i += 1) await new Promise((ok) => setTimeout(ok, 150));
  });
}

/** A line above the conversation (`actionLabel`, `action`: a button that does something about it). */
function showNotice(message, actionLabel = null, action = null) {
  const item = el("li", { class: "notice", dataTestid: "notice" });
  item.append(el("span", { text: message }));
  if (actionLabel && action) {
    const go = el("button", { type: "button", class: "quiet", text: actionLabel, dataTestid: "notice-open" });
    go.addEventListener("click", () => {
      item.remove();
      action();
    });
    item.append(go);
  }
  const close = el("button", { type: "button", class: "quiet", text: "Dismiss", ariaLabel: "Dismiss this notice" });
  close.addEventListener("click", () => item.remove());
  item.append(close);
  $("notices").append(item);
  while ($("notices").children.length > 4) $("notices").firstElementChild.remove();
}

/** Scroll to a shown message and mark it for a moment; false when it is not shown. */
function flashMessage(id) {
  const li = [...(records.get(id)?.els ?? [])].find((x) => !x.inThread && x.isConnected && !x.closest("[hidden]"));
  if (!li) return false;
  li.scrollIntoView({ block: "center" });
  li.classList.add("flash");
  setTimeout(() => li.classList.remove("flash"), 2500);
  return true;
}

function toggleReaction(r, emoji) {
  if (!client || r.deleted) return;
  const mineToo = Boolean(me && (r.reactions.get(emoji) ?? []).includes(me.name));
  const { promise } = mineToo ? client.unreact(r.messageId, emoji) : client.react(r.messageId, emoji);
  promise.catch((err) => {
    const c = convs.get(r.convKey);
    if (err.code === "muted" && c?.type === "room") setMuted(c.name, err.details?.until ?? null);
    showError(`Reaction not ${mineToo ? "removed" : "added"} (${err.code}): ${err.serverMessage ?? err.message}`);
  });
}

// -- the message menu and the reaction picker ---------------------------------------

function closePopup(refocus) {
  if (!popup) return;
  const { box, opener } = popup;
  popup = null;
  box.remove();
  if (opener.hasAttribute("aria-expanded")) opener.setAttribute("aria-expanded", "false");
  if (refocus && opener.isConnected) opener.focus();
  if (membersStale) renderMembers();
}

function openPopup(li, opener, box) {
  closePopup(false);
  popup = { box, opener, li };
  if (opener.hasAttribute("aria-expanded")) opener.setAttribute("aria-expanded", "true");
  li.append(box);
  box.scrollIntoView({ block: "nearest" });
}

function openMenu(li, opener) {
  const r = li.rec;
  const c = r ? convs.get(r.convKey) : null;
  if (!r || !c || r.deleted) return;
  const entries = [];
  if (c.type === "room") {
    if (li.inThread) entries.push(["Reply in the thread", "menu-reply", () => $("thread-text").focus()]);
    else {
      entries.push(["Reply", "menu-reply", () => startReply(r)]);
      entries.push([r.thread || r.replyCount ? "Open the thread" : "Reply in a thread", "menu-thread", () => openThread(c, r.thread ?? r.messageId)]);
    }
  }
  entries.push(["Add a reaction", "menu-react", () => openPicker(li, li.tools.querySelector('[data-testid="react-open"]'))]);
  if (isMine(r) && !r.file) entries.push(["Edit", "menu-edit", () => startEdit(li)]);
  if (canDelete(r)) entries.push(["Delete…", "menu-delete", () => askDelete(li)]);
  const menu = menuBox(entries, "Message actions", "msg-actions", "msg-actions");
  openPopup(li, opener, menu);
  menu.querySelector('[role="menuitem"]')?.focus();
}

let pickerCount = 0;
function openPicker(li, opener) {
  const r = li.rec;
  if (!r || r.deleted) return;
  const box = el("div", { class: "picker", role: "dialog", ariaLabel: "Add a reaction", dataTestid: "picker" });
  const row = el("div", { class: "picker-row" });
  for (const emoji of COMMON_EMOJI) {
    const button = el("button", { type: "button", class: "quiet emoji", text: emoji, dataTestid: "picker-emoji", dataEmoji: emoji });
    button.setAttribute("aria-label", `React with ${emoji}`);
    button.addEventListener("click", () => {
      closePopup(true);
      toggleReaction(r, emoji);
    });
    row.append(button);
  }
  const id = `picker-input-${++pickerCount}`;
  const form = el("form", { class: "picker-form" });
  const input = el("input", { id, maxLength: 64, autocomplete: "off", placeholder: "🦄 or :name:", dataTestid: "picker-input" });
  form.append(el("label", { htmlFor: id, text: "Any emoji" }), input, el("button", { type: "submit", class: "small", text: "Add", dataTestid: "picker-add" }));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const emoji = input.value.trim();
    if (!emoji) return;
    if (/\s/.test(emoji) && !/^:[a-z0-9_+-]{1,32}:$/.test(emoji)) {
      showError("One emoji, or :name: (letters, digits, _ + -)");
      return;
    }
    closePopup(true);
    if (!(r.reactions.get(emoji) ?? []).includes(me?.name)) toggleReaction(r, emoji);
  });
  box.append(row, form);
  box.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation();
      closePopup(true);
    }
  });
  box.addEventListener("focusout", (event) => {
    if (popup?.box === box && event.relatedTarget && !box.contains(event.relatedTarget) && event.relatedTarget !== opener) closePopup(false);
  });
  openPopup(li, opener, box);
  row.firstElementChild.focus();
}

// -- editing and deleting ---------------------------------------------------------------

let editCount = 0;
function startEdit(li) {
  const r = li.rec;
  if (!r || r.deleted || r.file || !isMine(r) || !client) return;
  closePopup(false);
  if (li.editing) {
    li.editing.querySelector("textarea").focus();
    return;
  }
  const id = `edit-${++editCount}`;
  const form = el("form", { class: "edit-form", dataTestid: "edit-form" });
  const box = el("textarea", { id, maxLength: 4000, rows: Math.min(6, r.text.split("\n").length), dataTestid: "edit-input" });
  box.value = r.text;
  const hint = el("span", { class: "hint", text: "Enter saves · Escape cancels" });
  const save = el("button", { type: "submit", class: "small", text: "Save", dataTestid: "edit-save" });
  const cancel = el("button", { type: "button", class: "quiet small", text: "Cancel", dataTestid: "edit-cancel" });
  const row = el("div", { class: "edit-row" }, hint, cancel, save);
  form.append(el("label", { htmlFor: id, class: "visually-hidden", text: "Edit your message" }), box, row);
  box.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    } else if (event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation();
      endEdit(li);
    }
  });
  cancel.addEventListener("click", () => endEdit(li));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    saveEdit(li, box.value);
  });
  li.editing = form;
  li.classList.add("editing");
  li.slots.body.replaceChildren(form);
  box.focus();
  box.setSelectionRange(box.value.length, box.value.length);
  form.scrollIntoView({ block: "nearest" });
}

function endEdit(li, refocus = true) {
  li.editing = null;
  li.classList.remove("editing");
  if (li.rec) renderMsg(li, li.rec);
  if (refocus) $(li.inThread ? "thread-text" : "text").focus();
}

function saveEdit(li, text) {
  const r = li.rec;
  endEdit(li);
  if (!r || r.deleted || text === r.text) return;
  if (!text.trim()) {
    askDelete(li); // nothing left: offer to delete it instead
    return;
  }
  const before = { text: r.text, editedAt: r.editedAt };
  let promise;
  try {
    ({ promise } = client.edit(r.messageId, text));
  } catch (err) {
    showError(`Not edited: ${err.serverMessage ?? err.message}`);
    return;
  }
  // Shown at once; the server's `edit` event confirms it, a refusal undoes it.
  r.text = text;
  r.saving = true;
  refresh(r);
  promise.then(
    () => {
      r.saving = false;
      if (!r.editedAt) r.editedAt = new Date().toISOString();
      refresh(r);
    },
    (err) => {
      r.saving = false;
      if (r.text === text) Object.assign(r, before);
      refresh(r);
      showError(`Not edited (${err.code}): ${err.serverMessage ?? err.message}`);
    },
  );
}

/** The last message of yours in `c` that can be edited (Up arrow in an empty box). */
function lastEditable(c) {
  for (let i = c.seqs.length - 1; i >= 0; i -= 1) {
    const li = c.items.get(c.seqs[i]);
    const r = li?.rec;
    if (r && isMine(r) && !r.deleted && !r.file) return li;
  }
  return null;
}

function askDelete(li) {
  const r = li.rec;
  if (!r || !canDelete(r)) return;
  closePopup(false);
  toDelete = { r, li };
  const theirs = !isMine(r);
  $("confirm-h").textContent = theirs ? `Delete this message from ${visibleName(r.from)}?` : "Delete this message?";
  $("confirm-why").textContent = theirs
    ? "Everyone will see “message deleted” in its place; the moderation log keeps who deleted it. This cannot be undone."
    : "Everyone will see “message deleted” in its place. This cannot be undone.";
  $("confirm-preview").textContent = r.file ? visibleName(r.file.name, "file") : r.text.length > 200 ? `${r.text.slice(0, 200)}…` : r.text;
  $("confirm-delete").showModal();
}

function confirmed(yes) {
  const target = toDelete;
  toDelete = null;
  if ($("confirm-delete").open) $("confirm-delete").close();
  if (!target) return;
  const more = target.li.tools?.querySelector('[data-testid="msg-menu"]');
  if (yes && client) {
    try {
      client.delete(target.r.messageId).promise.catch((err) => showError(`Not deleted (${err.code}): ${err.serverMessage ?? err.message}`));
    } catch (err) {
      showError(`Not deleted: ${err.serverMessage ?? err.message}`);
    }
    $(target.li.inThread ? "thread-text" : "text").focus();
  } else if (more?.isConnected) {
    more.focus();
  }
}

// -- replies and the thread pane ---------------------------------------------------------

function startReply(r) {
  const c = convs.get(r.convKey);
  if (!c || c.type !== "room" || r.deleted) return;
  if (c !== current) show(c);
  setReplying({ c, r });
  $("text").focus();
}

function setReplying(value) {
  replying = value;
  const bar = $("reply-bar");
  bar.hidden = !replying;
  if (!replying) return;
  const { r } = replying;
  const snippet = r.file ? visibleName(r.file.name, "file") : r.text.slice(0, QUOTE_CHARS);
  $("reply-who").textContent = visibleName(r.from);
  $("reply-quote").textContent = snippet;
}

function quoteOf(r) {
  return { from: r.from, message: r.file ? r.file.name : r.text.slice(0, QUOTE_CHARS), deleted: false };
}

async function openThread(c, rootId) {
  if (!c || c.type !== "room" || !client) return;
  if (thread?.rootId === rootId && thread.c === c) {
    $("thread-text").focus();
    return;
  }
  closeThread(false);
  closeSearch(false); // the thread takes the pane's place
  closeSidePane(false);
  thread = { c, rootId, items: new Map(), seqs: [], pending: [], hasMore: false, loading: false };
  $("thread-list").replaceChildren();
  $("thread-list").setAttribute("aria-label", `Thread in #${c.name}`);
  $("thread-where").textContent = `#${c.name}`;
  $("thread-pane").hidden = false;
  $("layout").classList.add("with-thread");
  $("thread-text").value = "";
  $("thread-text").focus();
  await loadThread();
}

async function loadThread() {
  const t = thread;
  if (!t || t.loading) return;
  t.loading = true;
  renderThreadOlder();
  const before = t.seqs.length && t.loaded ? t.seqs[0] : null;
  try {
    const page = await client.history(t.c.name, before, 50, { thread: t.rootId });
    if (thread !== t) return;
    for (const item of page.messages) addThreadItem(item);
    t.hasMore = page.hasMore;
    if (before === null) $("thread-scroller").scrollTop = $("thread-scroller").scrollHeight;
    const root = records.get(t.rootId);
    if (!t.hasMore && root && t.items.size > 0) {
      // The whole thread is here: its count is what it shows.
      const replies = [...t.items.values()].filter((li) => li.rec && li.rec.messageId !== t.rootId).length;
      if (replies !== root.replyCount) {
        root.replyCount = replies;
        refresh(root);
      }
    }
  } catch (err) {
    showError(`Could not load the thread: ${err.serverMessage ?? err.message}`);
  } finally {
    t.loading = false;
    t.loaded = true;
    renderThreadOlder();
  }
}

function renderThreadOlder() {
  const button = $("thread-older");
  button.hidden = !thread || !thread.hasMore;
  button.disabled = Boolean(thread?.loading);
}

function addThreadItem(item) {
  const t = thread;
  if (!t || t.items.has(item.seq)) return;
  const mine = Boolean(me && item.from === me.name);
  if (mine) {
    const p = t.pending.find((x) => x.text === item.text);
    if (p) {
      t.pending.splice(t.pending.indexOf(p), 1);
      p.li.remove();
    }
  }
  const li = messageLi(t.c, item, mine, true);
  if (item.messageId === t.rootId) li.classList.add("root");
  let lo = 0;
  while (lo < t.seqs.length && t.seqs[lo] < item.seq) lo += 1;
  const next = lo < t.seqs.length ? t.items.get(t.seqs[lo]) : t.pending[0]?.li;
  t.seqs.splice(lo, 0, item.seq);
  t.items.set(item.seq, li);
  li.dataset.seq = String(item.seq);
  if (next) next.before(li);
  else $("thread-list").append(li);
  const s = $("thread-scroller");
  if (s.scrollHeight - s.scrollTop - s.clientHeight < 120) s.scrollTop = s.scrollHeight;
}

function closeThread(refocus = true) {
  const t = thread;
  if (!t) return;
  thread = null;
  for (const li of t.items.values()) li.rec?.els.delete(li);
  $("thread-list").replaceChildren();
  $("thread-pane").hidden = true;
  $("layout").classList.remove("with-thread");
  if (refocus) $("text").focus();
}

function sendThreadReply(text) {
  const t = thread;
  if (!t || !client) return;
  try {
    const { id } = client.sendChat(t.c.name, text, {}, { replyTo: t.rootId });
    const root = records.get(t.rootId);
    const quote = root ? quoteOf(root) : null;
    addPending(t.c, id, "text", text, null, quote);
    const li = messageLi(t.c, { from: me.name, text, file: null, timestamp: null, quote }, true, true);
    li.dataset.pending = id;
    setStatus(li, "sending");
    $("thread-list").append(li);
    t.pending.push({ id, li, text });
    $("thread-scroller").scrollTop = $("thread-scroller").scrollHeight;
  } catch (err) {
    showError(`Not sent: ${err.serverMessage ?? err.message}`);
  }
  updateBanner();
}

// -- @ autocomplete --------------------------------------------------------------------

const ac = { input: null, list: null, names: [], index: 0, start: 0, end: 0 };

/** Who may be named in `c`: its members, the people who wrote in it; never yourself or guests. */
function mentionable(c) {
  const names = new Set();
  if (c.type === "room") {
    for (const name of c.members) names.add(name);
    for (const name of roomInfo(c.name)?.members ?? []) names.add(name);
    for (const r of records.values()) if (r.convKey === c.key) names.add(r.from);
  } else {
    names.add(c.name);
  }
  const self = me?.name.toLowerCase();
  return [...names].filter((n) => n && n.toLowerCase() !== self && !n.startsWith("guest-"));
}

function acUpdate(input) {
  const c = input.id === "thread-text" ? thread?.c : current;
  const caret = input.selectionStart ?? input.value.length;
  const match = input.value.slice(0, caret).match(/(?:^|[^\p{L}\p{N}_.@-])@([\p{L}\p{N}_.-]*)$/u);
  if (!c || !match || input.selectionEnd !== caret) {
    acClose();
    return;
  }
  const prefix = match[1].toLowerCase();
  const names = mentionable(c)
    .filter((n) => n.toLowerCase().startsWith(prefix))
    .sort((a, b) => a.localeCompare(b))
    .slice(0, 8);
  if (!names.length) {
    acClose();
    return;
  }
  if (ac.input && ac.input !== input) acClose();
  Object.assign(ac, { input, list: $(input.getAttribute("aria-controls")), names, index: 0, start: caret - match[1].length - 1, end: caret });
  acRender();
}

function acRender() {
  const { input, list, names, index } = ac;
  list.replaceChildren();
  names.forEach((name, i) => {
    const option = el("li", { id: `${list.id}-${i}`, role: "option", class: `option${i === index ? " active" : ""}`, ariaSelected: String(i === index), dataTestid: "mention-option", text: `@${visibleName(name)}` });
    option.addEventListener("mousedown", (event) => event.preventDefault()); // keep the focus in the box
    option.addEventListener("click", () => acPick(i));
    list.append(option);
  });
  list.hidden = false;
  input.setAttribute("aria-expanded", "true");
  input.setAttribute("aria-activedescendant", `${list.id}-${index}`);
}

function acClose() {
  if (!ac.input) return;
  ac.list.hidden = true;
  ac.list.replaceChildren();
  ac.input.setAttribute("aria-expanded", "false");
  ac.input.removeAttribute("aria-activedescendant");
  ac.input = null;
}

function acPick(i) {
  const { input, names, start, end } = ac;
  if (!input) return;
  const name = names[i];
  const rest = input.value.slice(end);
  const insert = `@${name}${rest.startsWith(" ") ? "" : " "}`;
  input.value = input.value.slice(0, start) + insert + rest;
  const caret = start + insert.length;
  input.setSelectionRange(caret, caret);
  acClose();
  input.focus();
}

/** Keys for an open list; true when the key was used. */
function acKey(event) {
  if (!ac.input || ac.input !== event.target) return false;
  const n = ac.names.length;
  if (event.key === "ArrowDown" || event.key === "ArrowUp") {
    ac.index = (ac.index + (event.key === "ArrowDown" ? 1 : n - 1)) % n;
    acRender();
  } else if (event.key === "Enter" || event.key === "Tab") {
    acPick(ac.index);
  } else if (event.key === "Escape") {
    acClose();
  } else {
    return false;
  }
  event.preventDefault();
  event.stopPropagation();
  return true;
}

// -- showing ---------------------------------------------------------------------

function show(c) {
  if (current) current.list.hidden = true;
  const again = current === c;
  current = c;
  c.list.hidden = false;
  // The "new messages" line marks where the user left off, as it was when opened.
  if (!again) c.lineAfter = c.unread > 0 && c.lastRead !== null ? c.lastRead : null;
  closePopup(false);
  acClose();
  if (replying && replying.c !== c) setReplying(null);
  if (thread && thread.c !== c) closeThread(false);
  renderRoomHead();
  renderComposer();
  if (c.type === "room" && (!details.has(c.name) || !again)) loadDetails(c.name);
  if (sidePane === "room" && paneRoom !== c.name) {
    if (c.type === "room") {
      paneRoom = c.name;
      delete $("rs-form").dataset.dirty;
      $("rs-status").textContent = "";
      renderRoomPane();
      if (moderates(c.name)) loadAudit(true);
      else $("rs-audit").replaceChildren();
    } else closeSidePane(false);
  }
  $("leave").hidden = c.type !== "room" || c.name === LOBBY;
  $("members-pane").classList.toggle("none", c.type !== "room");
  $("members-toggle").hidden = c.type !== "room";
  renderMembers();
  renderTyping();
  renderNav();
  renderOlder();
  renderSettings();
  renderSearchScope();
  if (!c.loaded && (c.type === "dm" || c.joined)) loadOlder(c);
  if (!again) scrollToStart(c);
  closeSidebar();
}

let membersStale = false; // changed while a member's menu was open: shown once it closes

function renderMembers() {
  const list = $("members");
  if (popup && list.contains(popup.box)) {
    membersStale = true;
    return;
  }
  membersStale = false;
  const focused = list.contains(document.activeElement) ? document.activeElement.closest("li")?.dataset.name : null;
  list.replaceChildren();
  if (!current || current.type !== "room") return;
  const names = [...current.members].sort((a, b) => a.localeCompare(b));
  const room = current.name;
  const info = details.get(room);
  const mod = moderates(room);
  for (const name of names) {
    const li = el("li", { dataTestid: "member", dataName: name });
    li.append(el("span", { class: "dot on", ariaHidden: "true" }));
    // The name opens the member menu: a direct message, and what a moderator may do.
    if (me && !me.guest && name !== me.name) li.append(memberButton(li, room, name, { className: "member-name", testid: "member-name", text: visibleName(name) }));
    else li.append(el("span", { class: "member-label", text: visibleName(name) }));
    if (me && name === me.name) li.append(el("span", { class: "you", text: " (you)" }));
    const role = info?.owner === name ? "owner" : (info?.moderators ?? []).includes(name) ? "mod" : null;
    if (role) li.append(el("span", { class: "role-badge", dataTestid: "member-role", text: role, title: role === "mod" ? "moderator" : "owner" }));
    if (mod && (info.mutes ?? []).some((m) => m.user === name && Date.parse(m.until) > Date.now())) {
      li.append(el("span", { class: "role-badge muted", dataTestid: "member-muted", text: "muted" }));
    }
    if (me && !me.guest && !name.startsWith("guest-") && name !== me.name) {
      const dm = el("button", { type: "button", class: "quiet small member-dm", text: "Message", ariaLabel: `Message ${visibleName(name)}` });
      dm.addEventListener("click", () => openDm(name));
      li.append(dm);
    }
    list.append(li);
  }
  if (focused) list.querySelector(`li[data-name="${CSS.escape(focused)}"] button`)?.focus();
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
  // The badges are for the eye; the button's name says the counts in words.
  if (c && c.mentionCount > 0) button.append(el("span", { class: "badge mention-badge", dataTestid: "mention-badge", ariaHidden: "true", text: `@${c.mentionCount}`, title: plural(c.mentionCount, "mention of you", "mentions of you") }));
  if (c && c.unread > 0) button.append(el("span", { class: "badge", dataTestid: "unread", ariaHidden: "true", text: String(c.unread), title: plural(c.unread, "unread message", "unread messages") }));
  if (c && (c.unread > 0 || c.mentionCount > 0)) {
    const counts = [c.unread > 0 ? plural(c.unread, "unread message", "unread messages") : null, c.mentionCount > 0 ? plural(c.mentionCount, "mention", "mentions") : null];
    button.append(el("span", { class: "visually-hidden", text: `, ${counts.filter(Boolean).join(", ")}` }));
  }
  li.append(button);
  return [li, button];
}

function renderNav() {
  const rooms = new Map();
  for (const r of apiRooms) if (!goneRooms.has(r.name)) rooms.set(r.name, { private: r.private, count: r.member_count });
  for (const c of convs.values()) {
    if (c.type === "room" && c.joined) {
      rooms.set(c.name, { private: rooms.get(c.name)?.private ?? false, count: c.members.size || c.memberCount });
    } else if (c.type === "room" && !rooms.has(c.name) && (c.unread > 0 || c.mentionCount > 0)) {
      // Unread on another device, not joined on this page (the `unread` list).
      rooms.set(c.name, { private: false, count: 0 });
    }
  }
  const list = $("rooms");
  list.replaceChildren();
  for (const name of [...rooms.keys()].sort((a, b) => (a === LOBBY ? -1 : b === LOBBY ? 1 : a.localeCompare(b)))) {
    const info = rooms.get(name);
    const [li, button] = navButton(`${info.private ? "🔒" : "#"} ${name}`, `#${name}`, String(info.count ?? 0));
    const title = details.get(name)?.title;
    button.title = `${title && title !== name ? `${title}: ` : ""}${plural(info.count ?? 0, "member", "members")} online`;
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

// -- read markers, unread counts and receipts ------------------------------------------

/** Is the user looking at the page: the tab shown and the window focused. */
function reading() {
  return document.visibilityState === "visible" && document.hasFocus();
}

function onIntersect(entries) {
  for (const e of entries) {
    const half = e.rootBounds ? e.intersectionRect.height >= e.rootBounds.height / 2 : false;
    if (e.isIntersecting && (e.intersectionRatio >= 0.5 || half)) onScreen.add(e.target);
    else onScreen.delete(e.target);
  }
  markSeen();
}

/** What is on screen of the open conversation is read (when the user can see it). */
function markSeen() {
  const c = current;
  if (!c || !client || !reading()) return;
  let top = null;
  for (const li of onScreen) {
    if (!li.isConnected || li.parentElement !== c.list) {
      if (!li.isConnected) onScreen.delete(li);
      continue;
    }
    const seq = Number(li.dataset.seq);
    if (Number.isInteger(seq) && (top === null || seq > top)) top = seq;
  }
  if (top === null || (c.lastRead !== null && top <= c.lastRead)) return;
  c.lastRead = top;
  recount(c);
  renderNav();
  scheduleRead(c);
}

/** Send the conversation's marker soon (once per READ_EVERY at most); guests keep theirs here. */
function scheduleRead(c) {
  if (!me || me.guest || c.readTimer) return;
  c.readTimer = setTimeout(() => {
    c.readTimer = null;
    sendRead(c);
  }, READ_EVERY);
}

function sendRead(c) {
  if (!client || convs.get(c.key) !== c || c.lastRead === null || c.lastRead <= c.readSent) return;
  const seq = c.lastRead;
  c.readSent = seq;
  try {
    client.markRead(c.type === "room" ? { room: c.name } : { with: c.name }, seq).promise.catch(() => {
      // Refused (left the room meanwhile): the next read tries again.
      if (c.readSent === seq) c.readSent = 0;
    });
  } catch {
    c.readSent = 0; // closed, or too much waiting: the next read tries again
  }
}

/**
 * The counts of what follows the marker, from the messages shown, or null when
 * some of them are not here (not loaded yet): then the server's counts stand.
 */
function localCounts(c) {
  const from = c.lastRead ?? 0;
  const covered = c.type === "dm" ? directCoveredFrom : c.coveredFrom;
  if (covered > from + 1) return null;
  let unread = 0;
  let mentions = 0;
  for (let i = c.seqs.length - 1; i >= 0 && c.seqs[i] > from; i -= 1) {
    const r = c.items.get(c.seqs[i])?.rec;
    if (!r || isMine(r) || r.deleted) continue;
    unread += 1;
    if (mentionsMe(r)) mentions += 1;
  }
  return { unread, mentions };
}

/** Count again from the messages shown when they are all here; true when it did. */
function recount(c) {
  const local = localCounts(c);
  if (!local) return false;
  c.unread = local.unread;
  c.mentionCount = local.mentions;
  if (c.seqs.length) c.counted = Math.max(c.counted, c.seqs[c.seqs.length - 1]);
  return true;
}

/** A message from someone else just came: unread until it is seen. */
function countLive(c, r) {
  if (r.seq > c.counted && (c.lastRead === null || r.seq > c.lastRead) && !r.deleted) {
    c.unread += 1;
    if (mentionsMe(r)) c.mentionCount += 1;
  }
  c.counted = Math.max(c.counted, r.seq);
  renderNav();
}

/**
 * The server's word on a conversation: its marker `seq` and the counts after
 * it (`through`: messages up to this seq are in them). An older marker than
 * this page's is old news; the page's own count wins when it can make one.
 */
function takeCounts(c, { seq, unread = 0, mentions = 0, through = null }) {
  if (!Number.isInteger(seq)) return;
  if (c.lastRead !== null && seq < c.lastRead) return;
  c.lastRead = seq;
  c.readSent = Math.max(c.readSent, seq);
  if (through !== null) c.counted = Math.max(c.counted, through);
  if (!recount(c)) {
    c.unread = Number(unread) || 0;
    c.mentionCount = Number(mentions) || 0;
  }
}

/** The `unread` answer: every room and direct conversation with a marker. */
function applyUnread(data) {
  for (const item of Array.isArray(data?.rooms) ? data.rooms : []) {
    const name = String(item.room ?? "");
    if (!name || leftRooms.has(name)) continue;
    const known = convs.get(`#${name}`);
    if (!known && !(item.unread > 0)) continue;
    takeCounts(known ?? conv(`#${name}`), { seq: item.last_read, unread: item.unread, mentions: item.mentions, through: item.last_seq ?? null });
  }
  for (const item of Array.isArray(data?.direct?.conversations) ? data.direct.conversations : []) {
    const peer = String(item.with ?? "");
    if (!peer || (me && peer === me.name)) continue;
    takeCounts(conv(`@${peer}`), { seq: item.last_read, unread: item.unread, mentions: item.mentions, through: item.last_seq ?? null });
  }
  renderNav();
}

async function refreshUnread() {
  if (!client || !me || me.guest) return;
  try {
    applyUnread(await client.unread());
  } catch {
    // offline, or a server without counts: the page counts what it sees
  }
}

function refreshUnreadSoon() {
  clearTimeout(unreadSoon);
  unreadSoon = setTimeout(refreshUnread, 300);
}

/** A `read` frame: this user's marker moved (this page's answer, or another device). */
function onRead(p) {
  const counts = { seq: Number(p.seq), unread: p.unread, mentions: p.mentions };
  if (p.room !== undefined && p.room !== null) {
    const name = String(p.room);
    const c = convs.get(`#${name}`) ?? (p.unread > 0 && !leftRooms.has(name) ? conv(`#${name}`) : null);
    if (c) takeCounts(c, counts);
  } else if (p.direct && p.with) {
    const peer = String(p.with);
    const c = convs.get(`@${peer}`) ?? (p.unread > 0 ? conv(`@${peer}`) : null);
    if (c) takeCounts(c, counts);
  } else if (p.direct) {
    // The whole direct stream up to seq: every conversation, counted again.
    for (const c of convs.values()) {
      if (c.type !== "dm" || (c.lastRead !== null && c.lastRead >= counts.seq)) continue;
      c.lastRead = counts.seq;
      c.readSent = Math.max(c.readSent, counts.seq);
    }
    let exact = true;
    for (const c of convs.values()) if (c.type === "dm" && !recount(c)) exact = false;
    if (!exact) refreshUnreadSoon();
  }
  renderNav();
}

/** A `receipt` frame: someone read a room up to seq, or our conversation with them. */
function onReceipt(p) {
  const user = String(p.user ?? "");
  const seq = Number(p.seq);
  if (!user || !Number.isInteger(seq) || (me && user === me.name)) return;
  if (p.direct) {
    if (seq > (dmSeen.get(user) ?? 0)) dmSeen.set(user, seq);
    const c = convs.get(`@${user}`);
    if (c) renderReceipts(c);
  } else if (p.room !== undefined && p.room !== null) {
    const c = convs.get(`#${p.room}`);
    if (!c) return;
    if (seq > (c.receipts.get(user) ?? 0)) c.receipts.set(user, seq);
    renderReceipts(c);
  }
}

/** The receipts of a history page (readers' markers, or counts in a big room). */
function takeReceipts(c, page) {
  for (const [user, seq] of page.receipts ?? []) if (seq > (c.receipts.get(user) ?? 0)) c.receipts.set(user, seq);
  for (const [seq, n] of page.readCounts ?? []) c.readCounts.set(seq, n);
  renderReceipts(c);
}

function takeDirectPage(page) {
  for (const [user, seq] of page.receipts ?? []) if (seq > (dmSeen.get(user) ?? 0)) dmSeen.set(user, seq);
  for (const c of convs.values()) {
    if (c.type === "dm") {
      recount(c);
      renderReceipts(c);
    }
  }
}

/** My last message at or before `seq` (shown, not deleted), or null. */
function lastMineUpTo(c, seq) {
  for (let i = c.seqs.length - 1; i >= 0; i -= 1) {
    if (c.seqs[i] > seq) continue;
    const li = c.items.get(c.seqs[i]);
    if (li && me && li.dataset.from === me.name && !li.rec?.deleted) return li;
  }
  return null;
}

/** "Seen" under the last of my messages someone has read: one line per conversation. */
function renderReceipts(c) {
  let li = null;
  let text = "";
  let title = "";
  if (me && !me.guest && convs.get(c.key) === c) {
    if (c.type === "dm") {
      const seq = dmSeen.get(c.name);
      li = seq ? lastMineUpTo(c, seq) : null;
      text = "Seen";
      title = `Seen by ${visibleName(c.name)}`;
    } else if (roomInfo(c.name)?.receipts !== false) {
      const readers = [...c.receipts].filter(([user]) => user !== me.name);
      const top = Math.max(0, ...readers.map(([, seq]) => seq));
      li = top ? lastMineUpTo(c, top) : null;
      if (li) {
        const seq = Number(li.dataset.seq);
        const names = readers.filter(([, s]) => s >= seq).map(([user]) => visibleName(user)).sort((a, b) => a.localeCompare(b));
        text = names.length <= 3 ? `Seen by ${names.join(", ")}` : `Seen by ${names.length}`;
        title = `Seen by ${names.join(", ")}`;
      } else if (c.readCounts.size) {
        // A big room: how many have read each message of a history page.
        for (let i = c.seqs.length - 1; i >= 0 && !li; i -= 1) {
          const n = c.readCounts.get(c.seqs[i]) ?? 0;
          const mine = c.items.get(c.seqs[i]);
          if (n > 0 && mine?.dataset.from === me.name && !mine.rec?.deleted) {
            li = mine;
            text = `Seen by ${n}`;
            title = plural(n, "reader", "readers");
          }
        }
      }
    }
  }
  if (c.receiptLi && c.receiptLi !== li) c.receiptLi.slots.receipt.replaceChildren();
  c.receiptLi = li;
  if (!li) return;
  const slot = li.slots.receipt;
  if (slot.textContent !== text) slot.replaceChildren(el("span", { text }));
  slot.title = title;
}

/** The "new messages" line before the first message from someone else after `lineAfter`. */
function placeNewLine(c) {
  const old = c.list.querySelector(":scope > .new-line");
  let target = null;
  if (c.lineAfter !== null && me) {
    for (const seq of c.seqs) {
      if (seq <= c.lineAfter) continue;
      const li = c.items.get(seq);
      if (li && li.dataset.from !== me.name) {
        target = li;
        break;
      }
    }
  }
  if (!target) {
    old?.remove();
    return;
  }
  const line = old ?? el("li", { class: "new-line", role: "separator", dataTestid: "new-line", ariaLabel: "New messages" }, el("span", { text: "New messages" }));
  if (target.previousElementSibling !== line) target.before(line);
}

/** Scroll an opened conversation to its "new messages" line, or to the bottom. */
function scrollToStart(c) {
  if (c !== current) return;
  placeNewLine(c);
  const line = c.list.querySelector(":scope > .new-line");
  if (!line) {
    scrollToBottom();
    return;
  }
  const s = $("scroller");
  s.scrollTop = Math.max(0, line.offsetTop - s.offsetTop - 8);
}

/** Back to the page: the line moves to where the user left off, what shows is read. */
function onAttention() {
  if (!reading()) return;
  const c = current;
  if (c && c.unread > 0 && c.lastRead !== null) {
    c.lineAfter = c.lastRead;
    placeNewLine(c);
  }
  markSeen();
}

// -- settings: my receipts, a room's receipts ---------------------------------------------

async function loadSettings() {
  if (!me || me.guest) {
    renderSettings();
    return;
  }
  try {
    settings = await api("GET", "/api/me/settings");
  } catch {
    settings = null;
  }
  renderSettings();
}

function renderSettings() {
  const registered = Boolean(me && !me.guest);
  $("settings-section").hidden = !registered;
  if (!registered) return;
  $("hide-receipts-field").hidden = settings === null;
  $("hide-receipts-hint").hidden = settings === null;
  // A box being saved keeps what the user chose until the server answers.
  if (!$("hide-receipts").disabled) $("hide-receipts").checked = Boolean(settings?.hide_receipts);
  const info = current?.type === "room" ? roomInfo(current.name) : null;
  const owner = Boolean(info && info.owner === me.name && info.receipts !== undefined);
  $("room-receipts-field").hidden = !owner;
  if (owner) {
    $("room-receipts-name").textContent = `#${info.name}`;
    if (!$("room-receipts").disabled) $("room-receipts").checked = info.receipts !== false;
  }
}

async function saveHideReceipts(hide) {
  const box = $("hide-receipts");
  box.disabled = true;
  try {
    settings = await api("PUT", "/api/me/settings", { hide_receipts: hide });
  } catch (err) {
    showError(`Setting not saved: ${err.message}`);
  } finally {
    box.disabled = false;
    renderSettings();
  }
}

async function saveRoomReceipts(on) {
  const c = current;
  if (!c || c.type !== "room") return;
  const box = $("room-receipts");
  box.disabled = true;
  try {
    const data = await api("PATCH", `/api/rooms/${encodeURIComponent(c.name)}`, { receipts: on });
    const room = data?.room ?? data;
    const at = apiRooms.findIndex((r) => r.name === c.name);
    if (room && at >= 0) apiRooms[at] = { ...apiRooms[at], ...room };
    renderReceipts(c);
  } catch (err) {
    showError(`Not changed for #${c.name}: ${err.message}`);
  } finally {
    box.disabled = false;
    renderSettings();
  }
}

async function refreshRooms() {
  try {
    const data = await api("GET", "/api/rooms", null, session?.token ?? null);
    apiRooms = Array.isArray(data?.rooms) ? data.rooms : [];
    for (const r of apiRooms) {
      const info = details.get(r.name);
      if (info) Object.assign(r, { owner: info.owner ?? r.owner, receipts: info.receipts ?? r.receipts });
    }
    if (current?.type === "room" && mutedUntil.has(current.name)) loadDetails(current.name); // lifted early?
    renderNav();
    renderSettings();
    if (current?.type === "room") renderReceipts(current);
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
  leftRooms.delete(name);
  if (c.joined) {
    show(c);
    return;
  }
  try {
    await client.join(name);
    c.joined = true;
    goneRooms.delete(name);
    show(c);
  } catch (err) {
    if (err.code === "banned") {
      const reason = err.details?.reason ? `: ${err.details.reason}` : ".";
      showError(`You are banned from #${name} ${untilText(err.details?.until ?? null)}${reason}`);
    } else showError(`Cannot join #${name}: ${err.serverMessage ?? err.message}`);
    if (!c.seqs.length && !c.unread) {
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
  clearTimeout(c.readTimer);
  c.readTimer = null;
  sendRead(c); // what was read goes before the leave
  try {
    await client.leave(c.name);
  } catch (err) {
    showError(`Cannot leave #${c.name}: ${err.serverMessage ?? err.message}`);
    return;
  }
  c.list.remove();
  convs.delete(c.key);
  leftRooms.add(c.name);
  clearTimeout(c.readTimer);
  forgetRecords(c.key);
  if (thread?.c === c) closeThread(false);
  if (replying?.c === c) setReplying(null);
  current = null;
  show(conv(`#${LOBBY}`));
  refreshRoomsSoon();
}

// -- roles and moderation ---------------------------------------------------------------

const PRIVILEGED = new Set(["owner", "moderator", "admin"]);
const MUTE_TIMES = [[600, "10 minutes"], [3600, "1 hour"], [86400, "1 day"]];
const BAN_TIMES = [[3600, "1 hour"], [86400, "1 day"], [7 * 86400, "1 week"], [30 * 86400, "30 days"], [0, "Until it is lifted"]];
const SLOW_MODES = [0, 5, 10, 30, 60, 120, 300, 900, 3600];
/** The `reason` of the `removed` every member gets when a room is deleted. */
const DELETED_REASON = "the room was deleted";
const AUDIT_PAGE = 20;

function roomPath(name) {
  return `/api/rooms/${encodeURIComponent(name)}`;
}

/** This user's role in a room: "owner", "moderator", "admin", "member" or null (not known, or none). */
function roleIn(room) {
  return details.get(room)?.role ?? null;
}

/** May this user moderate the room (remove, ban, mute, delete any message, topic, slow mode)? */
function moderates(room) {
  return PRIVILEGED.has(roleIn(room));
}

/** May this user change everything in the room (title, receipts, roles, hand over, delete)? */
function manages(room) {
  const role = roleIn(room);
  return role === "owner" || role === "admin";
}

/** A moment, short when it is today: "14:05", or "Mon, Mar 3, 14:05". */
function whenText(when) {
  const now = new Date();
  const options = when.toDateString() === now.toDateString()
    ? { hour: "2-digit", minute: "2-digit" }
    : { weekday: "short", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" };
  if (when.getFullYear() !== now.getFullYear()) options.year = "numeric";
  return when.toLocaleString(undefined, options);
}

/** When a ban or mute ends, as words: "until 14:05", or "until it is lifted" (null). */
function untilText(iso) {
  if (!iso) return "until it is lifted";
  const when = new Date(iso);
  return Number.isNaN(when.getTime()) ? "for a while" : `until ${whenText(when)}`;
}

/** A time left, rounded up: "7 s", "12 min", "3 h 5 min", "2 days". */
function leftText(ms) {
  const s = Math.max(1, Math.ceil(ms / 1000));
  if (s < 60) return `${s} s`;
  const min = Math.ceil(s / 60);
  if (min < 60) return `${min} min`;
  const h = Math.floor(min / 60);
  if (h < 48) return min % 60 ? `${h} h ${min % 60} min` : `${h} h`;
  return plural(Math.round(h / 24), "day", "days");
}

function slowText(seconds) {
  if (!seconds) return "Off";
  if (seconds < 60) return `${seconds} seconds`;
  if (seconds < 3600) return plural(Math.round(seconds / 60), "minute", "minutes");
  return plural(Math.round(seconds / 3600), "hour", "hours");
}

/** GET /api/rooms/{room}: its settings, this user's role, its bans and mutes (for moderators). */
function loadDetails(name) {
  if (detailsLoading.has(name)) return detailsLoading.get(name);
  const mine = client;
  const job = (async () => {
    try {
      const data = await authed("GET", roomPath(name));
      if (client !== mine || !data?.room) return null;
      takeDetails(name, data.room);
      return data.room;
    } catch {
      return null; // not a room this user may see (any more): what it shows stays
    } finally {
      detailsLoading.delete(name);
    }
  })();
  detailsLoading.set(name, job);
  return job;
}

/** The current room's details again (after a reconnect, or now and then while muted). */
function refreshDetails() {
  if (current?.type === "room") loadDetails(current.name);
}

/**
 * A room's details as the server gave them: everything that shows them
 * follows. `full`: the whole view (GET, PATCH), where no `muted_until` means
 * not muted; a `room` frame says nothing of mutes.
 */
function takeDetails(name, room, full = true) {
  const info = { ...details.get(name), ...room, name };
  if (!PRIVILEGED.has(info.role)) {
    delete info.bans;
    delete info.mutes;
  }
  details.set(name, info);
  if ("muted_until" in room || (full && room.role)) setMuted(name, room.muted_until ?? null);
  if (PRIVILEGED.has(info.role)) slowUntil.delete(name); // never slowed in a room they moderate
  const listed = apiRooms.find((r) => r.name === name);
  if (listed) Object.assign(listed, { owner: info.owner ?? listed.owner, receipts: info.receipts ?? listed.receipts });
  if (current?.type === "room" && current.name === name) {
    renderRoomHead();
    renderMembers();
    renderComposer();
  }
  if (sidePane === "room" && paneRoom === name) renderRoomPane();
  renderSettings();
}

/** A `room` frame: the room's settings or roles changed (the whole of them). */
function onRoomFrame(p) {
  const name = String(p.room ?? "");
  if (!name) return;
  const before = details.get(name) ?? {};
  const owner = p.owner ?? null;
  const moderators = Array.isArray(p.moderators) ? p.moderators.map(String) : [];
  const room = {
    private: Boolean(p.private), owner, moderators,
    topic: String(p.topic ?? ""), title: String(p.title ?? name),
    slow_mode: Number(p.slow_mode ?? 0) || 0, receipts: p.receipts !== false,
  };
  if (me && !me.guest) {
    // My role as the frame says it; an admin stays one where they hold no role.
    if (owner === me.name) room.role = "owner";
    else if (moderators.includes(me.name)) room.role = "moderator";
    else if (me.admin || before.role === "admin") room.role = "admin";
    else if (before.role) room.role = "member";
  }
  const roleChanged = before.role !== room.role;
  takeDetails(name, room, false);
  if (roleChanged && room.role && PRIVILEGED.has(room.role)) loadDetails(name); // the bans and mutes
  if (sidePane === "room" && paneRoom === name && moderates(name)) loadAudit(true);
}

/** Taken out of a room (`removed`): it leaves the list, and a notice says who and why. */
function onRemoved(p) {
  const name = String(p.room ?? "");
  if (!name) return;
  const by = visibleName(p.by, "a moderator");
  const reason = p.reason ? String(p.reason) : "";
  const isPrivate = Boolean(details.get(name)?.private ?? roomInfo(name)?.private);
  const why = reason ? `: ${reason.replace(/[.!?]+$/, "")}.` : ".";
  let text;
  let action = null;
  if (reason === DELETED_REASON) text = `#${name} was deleted by ${by}.`;
  else if (p.banned) text = `${by} banned you from #${name} ${untilText(p.until)}${why}`;
  else if (me && p.by === me.name) text = `You left #${name}.`;
  else if (isPrivate) text = `${by} removed you from #${name}${why}`;
  else {
    text = `${by} took you out of #${name}${why} You may join it again.`;
    action = ["Join again", () => openRoom(name)];
  }
  dropRoom(name, text, action);
}

/** Forget a room this user is no longer in, say why in a notice, show another conversation. */
function dropRoom(name, text, action = null) {
  const c = convs.get(`#${name}`);
  goneRooms.add(name);
  details.delete(name);
  mutedUntil.delete(name);
  slowUntil.delete(name);
  if (sidePane === "room" && paneRoom === name) closeSidePane(false);
  if (c) {
    clearTimeout(c.readTimer);
    c.list.remove();
    convs.delete(c.key);
    forgetRecords(c.key);
    if (popup && !popup.li.isConnected) closePopup(false);
    if (thread?.c === c) closeThread(false);
    if (replying?.c === c) setReplying(null);
    if (current === c) {
      current = null;
      showFallback();
    }
  }
  showNotice(text, action?.[0] ?? null, action?.[1] ?? null);
  renderNav();
}

/** Show the lobby, another room or a direct conversation: the one shown is gone. */
function showFallback() {
  const all = [...convs.values()];
  const next = all.find((x) => x.type === "room" && x.joined && x.name === LOBBY)
    ?? all.find((x) => x.type === "room" && x.joined) ?? all.find((x) => x.type === "dm");
  if (next) {
    show(next);
    return;
  }
  renderRoomHead();
  renderMembers();
  renderComposer();
  renderNav();
}

/** The muted state of this user in a room (`until`: ISO, or null when not muted). */
function setMuted(room, until) {
  const ms = until ? Date.parse(until) : NaN;
  if (Number.isFinite(ms) && ms > Date.now()) mutedUntil.set(room, ms);
  else mutedUntil.delete(room);
  if (current?.type === "room" && current.name === room) renderComposer();
}

/** After sending in a slowed room, the wait before the next message (moderators are not slowed). */
function startSlow(room) {
  const seconds = Number(details.get(room)?.slow_mode ?? 0);
  if (seconds > 0 && !moderates(room)) {
    slowUntil.set(room, Math.max(slowUntil.get(room) ?? 0, Date.now() + seconds * 1000));
    renderComposer();
  }
}

/** The server asked a message to wait (slow mode): it goes by itself then; the composer counts down. */
function onRateLimited({ id, kind, room, retryAfter }) {
  if (!room || (kind !== "chat" && kind !== "file")) return;
  const slow = Number(details.get(room)?.slow_mode ?? 0) > 0;
  if (retryAfter >= 1000) slowUntil.set(room, Math.max(slowUntil.get(room) ?? 0, Date.now() + retryAfter));
  const [, p] = findPending(id);
  if (p) setStatus(p.li, "sending", `waiting ${leftText(retryAfter)} (${slow ? "slow mode" : "too fast"})`);
  if (current?.type === "room" && current.name === room) renderComposer();
}

/** The message box as this user may use it here: muted (read only), slowed down (a countdown), or free. */
function renderComposer() {
  const c = current;
  const now = Date.now();
  const room = c?.type === "room" ? c.name : null;
  const muted = room ? mutedUntil.get(room) ?? 0 : 0;
  const slow = room ? slowUntil.get(room) ?? 0 : 0;
  const isMuted = muted > now;
  const waiting = !isMuted && slow > now;
  let note = "";
  if (isMuted) note = `You are muted in #${room} ${untilText(new Date(muted).toISOString())} (${leftText(muted - now)} left). You can still read.`;
  else if (waiting) note = `Slow mode: you can send again in ${leftText(slow - now)}.`;
  else if (room && Number(details.get(room)?.slow_mode ?? 0) > 0 && !moderates(room)) note = `Slow mode is on: one message every ${slowText(details.get(room).slow_mode).replace(/^1 /, "")}.`;
  const box = $("text");
  box.disabled = !c || isMuted;
  box.placeholder = !c ? "Choose a room" : isMuted ? `You are muted in #${room}` : c.type === "room" ? `Message ${roomLabel(c.name)}` : `Message ${visibleName(c.name)}`;
  $("send").disabled = !c || isMuted || waiting;
  const noFiles = !me || me.guest || !c || isMuted || waiting;
  $("file").disabled = noFiles;
  $("attach-label").classList.toggle("disabled", noFiles);
  const line = $("composer-note");
  if (line.textContent !== note) line.textContent = note;
  line.hidden = !note;
  line.dataset.state = isMuted ? "muted" : waiting ? "slow" : "info";
}

/** Once a second: countdowns run, a mute or slow mode that ended frees the box. */
function tick() {
  const now = Date.now();
  for (const map of [mutedUntil, slowUntil]) {
    for (const [room, until] of map) if (until <= now - 1000) map.delete(room);
  }
  if (current?.type === "room" && (mutedUntil.has(current.name) || slowUntil.has(current.name) || !$("composer-note").hidden)) renderComposer();
}

/** The room's name as people see it: its title, or #name. */
function roomLabel(name) {
  const title = details.get(name)?.title;
  return title && title !== name ? title : `#${name}`;
}

/** The conversation's header: the room's title and topic (everyone sees them), or the person. */
function renderRoomHead() {
  const c = current;
  const room = c?.type === "room" ? c.name : null;
  const info = room ? details.get(room) : null;
  const title = info?.title && info.title !== room ? info.title : null;
  $("title").textContent = !c ? "No conversation" : room ? title ?? `#${room}` : `@${visibleName(c.name)}`;
  $("room-slug").textContent = title ? `#${room}` : "";
  $("room-slug").hidden = !title;
  const topic = info?.topic ?? "";
  if ($("topic").textContent !== topic) $("topic").textContent = topic;
  $("topic").hidden = !topic;
  $("topic").title = topic;
  $("room-settings-open").hidden = !room;
}

// -- the member menu ------------------------------------------------------------------

/** A menu (role=menu) of [label, testid, action] entries: arrows, Home, End, Escape, Tab. */
function menuBox(entries, label, testid, className) {
  const menu = el("div", { class: className, role: "menu", ariaLabel: label, dataTestid: testid });
  for (const [text, id, action] of entries) {
    const item = el("button", { type: "button", role: "menuitem", class: "menu-item", tabIndex: -1, text, dataTestid: id });
    item.addEventListener("click", () => {
      // The focus goes back to the opener first: what the action opens returns it there.
      const back = popup?.opener;
      closePopup(false);
      if (back?.isConnected) back.focus();
      action();
    });
    menu.append(item);
  }
  menu.addEventListener("keydown", (event) => {
    const items = [...menu.querySelectorAll('[role="menuitem"]')];
    const at = items.indexOf(document.activeElement);
    let next = null;
    if (event.key === "ArrowDown") next = items[(at + 1) % items.length];
    else if (event.key === "ArrowUp") next = items[(at - 1 + items.length) % items.length];
    else if (event.key === "Home") next = items[0];
    else if (event.key === "End") next = items[items.length - 1];
    else if (event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation();
      closePopup(true);
      return;
    } else if (event.key === "Tab") {
      closePopup(false);
      return;
    }
    if (next) {
      event.preventDefault();
      next.focus();
    }
  });
  return menu;
}

/** What this user may do to `name` in `room`, by their role: [label, testid, action] entries. */
function memberEntries(room, name) {
  const entries = [];
  if (!me || me.guest || !name || name === me.name) return entries;
  entries.push([`Message ${visibleName(name)}`, "mm-message", () => openDm(name)]);
  const info = details.get(room);
  const role = info?.role ?? null;
  if (!PRIVILEGED.has(role)) return entries;
  const full = role === "owner" || role === "admin";
  const isMod = (info.moderators ?? []).includes(name);
  // Nobody acts on the owner here; moderators do not act on each other.
  if (info.owner === name || (isMod && !full)) return entries;
  const who = visibleName(name);
  entries.push([info.private ? `Remove ${who} from #${room}…` : `Kick ${who} out of #${room}…`, "mm-remove", () => askModeration("remove", room, name)]);
  if (full) {
    entries.push(isMod
      ? ["Remove as moderator", "mm-unmoderator", () => setModerator(room, name, false)]
      : ["Make moderator", "mm-moderator", () => setModerator(room, name, true)]);
  }
  const mute = (info.mutes ?? []).find((m) => m.user === name && Date.parse(m.until) > Date.now());
  if (mute) entries.push([`Unmute (muted ${untilText(mute.until)})`, "mm-unmute", () => liftMute(room, name)]);
  else for (const [seconds, label] of MUTE_TIMES) entries.push([`Mute for ${label}`, `mm-mute-${seconds}`, () => muteMember(room, name, seconds)]);
  const banned = (info.bans ?? []).some((b) => b.user === name);
  entries.push(banned ? ["Lift the ban", "mm-unban", () => liftBan(room, name)] : ["Ban…", "mm-ban", () => askModeration("ban", room, name)]);
  return entries;
}

/** Open the member menu for `name` (from the members list or a message's author) under `li`. */
async function openMemberMenu(li, opener, room, name) {
  if (!details.has(room)) await loadDetails(room);
  const entries = memberEntries(room, name);
  if (!entries.length || !opener.isConnected) return;
  const inMessage = li.classList.contains("msg");
  const box = menuBox(entries, `Actions for ${visibleName(name)}`, "member-actions", inMessage ? "msg-actions member-actions" : "member-actions");
  openPopup(li, opener, box);
  box.querySelector('[role="menuitem"]')?.focus();
}

/** A button that opens the member menu: the name in the members list, a message's author. */
function memberButton(li, room, name, { className, testid, text }) {
  const button = el("button", {
    type: "button", class: className, dataTestid: testid, text,
    ariaHaspopup: "menu", ariaExpanded: "false", title: `Actions for ${visibleName(name)}`,
  });
  button.addEventListener("click", () => (popup?.opener === button ? closePopup(true) : openMemberMenu(li, button, room, name)));
  button.addEventListener("keydown", (event) => {
    if (event.key === "ArrowDown" && popup?.opener !== button) {
      event.preventDefault();
      openMemberMenu(li, button, room, name);
    }
  });
  return button;
}

/** A moderation call: a notice when it is done, the room's details read again; null when refused. */
async function moderate(room, method, path, body, done, failed) {
  try {
    const data = await authed(method, path, body);
    if (done) showNotice(typeof done === "function" ? done(data) : done);
    await loadDetails(room);
    if (sidePane === "room" && paneRoom === room && moderates(room)) loadAudit(true);
    return data ?? {};
  } catch (err) {
    showError(`${failed}: ${err.message}`);
    return null;
  }
}

function memberPath(room, kind, name) {
  return `${roomPath(room)}/${kind}/${encodeURIComponent(name)}`;
}

function muteMember(room, name, seconds) {
  const who = visibleName(name);
  return moderate(room, "PUT", memberPath(room, "mutes", name), { for: seconds },
    (data) => `${who} is muted in #${room} ${untilText(data?.mute?.until ?? new Date(Date.now() + seconds * 1000).toISOString())}.`,
    `${who} was not muted`);
}

function liftMute(room, name) {
  const who = visibleName(name);
  return moderate(room, "DELETE", memberPath(room, "mutes", name), null, `${who} may write in #${room} again.`, `${who} is still muted`);
}

function liftBan(room, name) {
  const who = visibleName(name);
  return moderate(room, "DELETE", memberPath(room, "bans", name), null, `The ban on ${who} in #${room} was lifted.`, `The ban on ${who} stays`);
}

function setModerator(room, name, on) {
  const who = visibleName(name);
  return moderate(room, on ? "PUT" : "DELETE", memberPath(room, "moderators", name), null,
    on ? `${who} is now a moderator of #${room}.` : `${who} is no longer a moderator of #${room}.`,
    on ? `${who} was not made a moderator` : `${who} is still a moderator`);
}

// -- the moderation dialog (remove or ban, with a reason) and confirmations ----------------

let modAction = null; // {kind, room, name, opener}

/** Ask how long and why before removing or banning `name` (Escape or Cancel: nothing happens). */
function askModeration(kind, room, name) {
  const who = visibleName(name);
  const info = details.get(room);
  const opener = document.activeElement instanceof HTMLElement && document.activeElement !== document.body ? document.activeElement : null;
  modAction = { kind, room, name, opener };
  const ban = kind === "ban";
  $("mod-h").textContent = ban ? `Ban ${who} from #${room}` : info?.private ? `Remove ${who} from #${room}` : `Kick ${who} out of #${room}`;
  $("mod-why").textContent = ban
    ? `${who} is taken out of #${room} now and cannot join, read or search it until the ban ends.`
    : info?.private
      ? `${who} is taken out of #${room} now and loses access to it.`
      : `${who} is taken out of #${room} now, and may join it again.`;
  $("mod-for-field").hidden = !ban;
  const select = $("mod-for");
  select.replaceChildren(...BAN_TIMES.map(([seconds, label]) => el("option", { value: String(seconds), text: label })));
  select.value = String(86400);
  $("mod-reason").value = "";
  $("mod-go").textContent = ban ? "Ban" : info?.private ? "Remove" : "Kick out";
  $("mod-dialog").showModal();
  (ban ? select : $("mod-reason")).focus();
}

async function modSubmit() {
  const action = modAction;
  if (!action) return;
  const reason = $("mod-reason").value.trim();
  const seconds = Number($("mod-for").value);
  closeModDialog(false);
  const who = visibleName(action.name);
  const { room, name } = action;
  if (action.kind === "ban") {
    const body = {};
    if (seconds > 0) body.for = seconds;
    if (reason) body.reason = reason;
    await moderate(room, "PUT", memberPath(room, "bans", name), body,
      (data) => `${who} is banned from #${room} ${untilText(data?.ban?.until ?? null)}.`, `${who} was not banned`);
  } else {
    await moderate(room, "DELETE", memberPath(room, "members", name), reason ? { reason } : null,
      `${who} was taken out of #${room}.`, `${who} was not taken out`);
  }
  if (action.opener?.isConnected) action.opener.focus();
}

function closeModDialog(refocus = true) {
  const action = modAction;
  modAction = null;
  if ($("mod-dialog").open) $("mod-dialog").close();
  if (refocus && action?.opener?.isConnected) action.opener.focus();
}

let asking = null; // {resolve, opener}: the confirmation shown

/** A confirmation (Cancel has the focus first): resolves true when the user goes ahead. */
function ask(title, text, goLabel) {
  closeAsk(false);
  $("ask-h").textContent = title;
  $("ask-why").textContent = text;
  $("ask-go").textContent = goLabel;
  const opener = document.activeElement instanceof HTMLElement ? document.activeElement : null;
  return new Promise((resolve) => {
    asking = { resolve, opener };
    $("ask-dialog").showModal();
    $("ask-cancel").focus();
  });
}

function closeAsk(yes) {
  const a = asking;
  asking = null;
  if ($("ask-dialog").open) $("ask-dialog").close();
  if (!a) return;
  if (!yes && a.opener?.isConnected) a.opener.focus();
  a.resolve(yes);
}

// -- side panes: the room's settings, the account -----------------------------------------

let paneRoom = null; // the room the settings pane shows

function closeSidePane(refocus = true) {
  if (!sidePane) return;
  const was = sidePane;
  sidePane = null;
  paneRoom = null;
  audit = null;
  $("room-pane").hidden = true;
  $("account-pane").hidden = true;
  $("layout").classList.remove("with-pane");
  $("room-settings-open").setAttribute("aria-expanded", "false");
  $("account-open").setAttribute("aria-expanded", "false");
  if (refocus) $(was === "room" ? "room-settings-open" : "account-open").focus();
}

function openPane(kind) {
  closeThread(false);
  closeSearch(false);
  closePopup(false);
  sidePane = kind;
  $("room-pane").hidden = kind !== "room";
  $("account-pane").hidden = kind !== "account";
  $("layout").classList.add("with-pane");
  $("room-settings-open").setAttribute("aria-expanded", String(kind === "room"));
  $("account-open").setAttribute("aria-expanded", String(kind === "account"));
}

/** The settings of the room shown: editable for its owner, moderators and admins, read-only for others. */
async function openRoomPane() {
  const c = current;
  if (!c || c.type !== "room") return;
  if (sidePane === "room" && paneRoom === c.name) {
    closeSidePane(true);
    return;
  }
  openPane("room");
  paneRoom = c.name;
  delete $("rs-form").dataset.dirty;
  $("rs-status").textContent = "";
  $("rs-audit").replaceChildren();
  audit = null;
  renderRoomPane();
  $("room-pane-h").focus();
  await loadDetails(c.name);
  if (sidePane === "room" && paneRoom === c.name && moderates(c.name)) loadAudit(true);
}

const ROLE_TEXT = {
  owner: "You own this room.",
  moderator: "You moderate this room: topic, slow mode, bans and mutes.",
  admin: "You are an admin: you may change anything here.",
  member: "Only the room's owner and moderators change these.",
};

function renderRoomPane() {
  const name = paneRoom;
  if (!name) return;
  const info = details.get(name) ?? { name };
  const role = info.role ?? null;
  const mod = PRIVILEGED.has(role);
  const full = role === "owner" || role === "admin";
  $("room-pane-where").textContent = `#${name}`;
  $("rs-role").textContent = ROLE_TEXT[role] ?? (details.has(name) ? ROLE_TEXT.member : "Loading…");
  const form = $("rs-form");
  if (!form.dataset.dirty) {
    $("rs-title").value = info.title && info.title !== name ? info.title : "";
    $("rs-topic").value = info.topic ?? "";
    const slow = $("rs-slow");
    const values = [...new Set([...SLOW_MODES, Number(info.slow_mode ?? 0)])].sort((a, b) => a - b);
    slow.replaceChildren(...values.map((v) => el("option", { value: String(v), text: slowText(v) })));
    slow.value = String(Number(info.slow_mode ?? 0));
    $("rs-receipts").checked = info.receipts !== false;
  }
  $("rs-title").readOnly = !full;
  $("rs-topic").readOnly = !mod;
  $("rs-slow").disabled = !mod;
  $("rs-receipts").disabled = !full;
  $("rs-save").hidden = !mod;
  $("rs-title-hint").textContent = full ? "Shown instead of the room's name; empty: the name." : "Shown instead of the room's name.";
  const people = $("rs-people");
  people.replaceChildren();
  if (info.owner) people.append(el("li", { dataTestid: "rs-owner" }, el("span", { class: "from", text: visibleName(info.owner) }), el("span", { class: "role-badge", text: "owner" })));
  for (const m of info.moderators ?? []) {
    const li = el("li", { dataTestid: "rs-moderator" }, el("span", { class: "from", text: visibleName(m) }), el("span", { class: "role-badge", text: "moderator" }));
    if (full) {
      const drop = el("button", { type: "button", class: "quiet small", text: "Remove role", ariaLabel: `Remove ${visibleName(m)} as moderator`, dataTestid: "rs-unmoderator" });
      drop.addEventListener("click", () => setModerator(name, m, false));
      li.append(drop);
    }
    people.append(li);
  }
  if (!people.children.length) people.append(el("li", { class: "hint", text: "No owner: admins look after this room." }));
  $("rs-owner-section").hidden = !full;
  $("rs-bans-section").hidden = !mod;
  $("rs-mutes-section").hidden = !mod;
  $("rs-audit-section").hidden = !mod;
  $("rs-delete-section").hidden = !full;
  $("rs-delete").textContent = `Delete #${name}…`;
  if (mod) {
    renderLifts($("rs-bans"), info.bans ?? [], "ban", name);
    renderLifts($("rs-mutes"), (info.mutes ?? []).filter((m) => Date.parse(m.until) > Date.now()), "mute", name);
  }
}

/** The bans or mutes of a room, each with a button that lifts it. */
function renderLifts(list, items, kind, room) {
  list.replaceChildren();
  if (!items.length) {
    list.append(el("li", { class: "hint", text: kind === "ban" ? "Nobody is banned." : "Nobody is muted." }));
    return;
  }
  for (const item of items) {
    const who = visibleName(item.user);
    const li = el("li", { class: "lift", dataTestid: kind === "ban" ? "rs-ban" : "rs-mute", dataUser: item.user });
    const text = el("span", { class: "lift-text" }, el("span", { class: "from", text: who }), ` ${untilText(item.until)}`);
    if (item.reason) text.append(`: ${item.reason}`);
    if (item.by) text.append(el("span", { class: "hint", text: ` (by ${visibleName(item.by)})` }));
    const lift = el("button", {
      type: "button", class: "quiet small", text: kind === "ban" ? "Lift ban" : "Unmute",
      ariaLabel: kind === "ban" ? `Lift the ban on ${who}` : `Unmute ${who}`, dataTestid: kind === "ban" ? "rs-unban" : "rs-unmute",
    });
    lift.addEventListener("click", () => (kind === "ban" ? liftBan(room, item.user) : liftMute(room, item.user)));
    li.append(text, lift);
    list.append(li);
  }
}

/** Save what changed in the settings form (only the fields this user may change). */
async function saveRoomSettings() {
  const name = paneRoom;
  const info = details.get(name);
  if (!name || !info || !moderates(name)) return;
  const body = {};
  const title = $("rs-title").value.trim();
  const shownTitle = info.title && info.title !== name ? info.title : "";
  if (manages(name) && title !== shownTitle) body.title = title;
  const topic = $("rs-topic").value.trim();
  if (topic !== (info.topic ?? "")) body.topic = topic;
  const slow = Number($("rs-slow").value);
  if (slow !== Number(info.slow_mode ?? 0)) body.slow_mode = slow;
  const receipts = $("rs-receipts").checked;
  if (manages(name) && receipts !== (info.receipts !== false)) body.receipts = receipts;
  const status = $("rs-status");
  if (!Object.keys(body).length) {
    status.textContent = "Nothing to save.";
    return;
  }
  $("rs-save").disabled = true;
  status.textContent = "Saving…";
  try {
    const data = await authed("PATCH", roomPath(name), body);
    delete $("rs-form").dataset.dirty;
    if (data?.room) takeDetails(name, data.room);
    else await loadDetails(name);
    if (paneRoom === name) status.textContent = "Saved.";
    if (moderates(name)) loadAudit(true);
  } catch (err) {
    status.textContent = `Not saved: ${err.message}`;
  } finally {
    $("rs-save").disabled = false;
  }
}

async function handOver() {
  const name = paneRoom;
  const to = $("rs-new-owner").value.trim();
  if (!name || !to) return;
  const who = visibleName(to);
  if (!(await ask(`Hand #${name} over to ${who}?`, `${who} becomes its owner; you become a moderator. Only ${who} or an admin can give it back.`, "Hand over"))) return;
  const done = await moderate(name, "PATCH", roomPath(name), { owner: to }, `${who} now owns #${name}.`, `#${name} was not handed over`);
  if (done) $("rs-new-owner").value = "";
}

async function deleteRoom() {
  const name = paneRoom;
  if (!name) return;
  if (!(await ask(`Delete #${name}?`, "Every message in it is erased, for everyone, and its members are taken out. The moderation log is kept. This cannot be undone.", "Delete the room"))) return;
  try {
    await authed("DELETE", roomPath(name));
    // Everyone in it, this page too, gets `removed`; if that is slow, the room goes now.
    if (convs.has(`#${name}`) || sidePane === "room") dropRoom(name, `#${name} was deleted.`);
  } catch (err) {
    showError(`#${name} was not deleted: ${err.message}`);
  }
}

// -- the moderation log -----------------------------------------------------------------------

const AUDIT_VERBS = {
  remove: (t) => `removed ${t}`,
  ban: (t) => `banned ${t}`,
  unban: (t) => `lifted the ban on ${t}`,
  mute: (t) => `muted ${t}`,
  unmute: (t) => `unmuted ${t}`,
  moderator: (t) => `made ${t} a moderator`,
  unmoderator: (t) => `took the moderator role from ${t}`,
  owner: (t) => `handed the room over to ${t}`,
  settings: () => "changed the settings",
  delete_message: () => "deleted a message",
  delete_room: () => "deleted the room",
};

/** One line of the log: when, who did what to whom, and why. */
function auditText(e) {
  const target = e.target ? visibleName(e.target) : "someone";
  const verb = AUDIT_VERBS[e.action]?.(target) ?? `${String(e.action ?? "did something")}${e.target ? ` (${target})` : ""}`;
  let text = `${visibleName(e.by, "someone")} ${verb}`;
  const d = e.detail && typeof e.detail === "object" ? e.detail : {};
  if (e.action === "delete_message" && d.author) text += ` by ${visibleName(d.author)}`;
  if ((e.action === "ban" || e.action === "mute") && "until" in d) text += ` ${untilText(typeof d.until === "number" ? new Date(d.until).toISOString() : d.until)}`;
  if (e.action === "settings") {
    const parts = [];
    if ("topic" in d) parts.push(d.topic ? `the topic to “${d.topic}”` : "no topic");
    if ("title" in d) parts.push(d.title ? `the display name to “${d.title}”` : "no display name");
    if ("slow_mode" in d) parts.push(Number(d.slow_mode) > 0 ? `slow mode to ${slowText(Number(d.slow_mode))}` : "slow mode off");
    if ("receipts" in d) parts.push(d.receipts ? "read receipts on" : "read receipts off");
    if (parts.length) text = `${visibleName(e.by, "someone")} set ${parts.join(", ")}`;
  }
  if (e.reason) text += `: ${e.reason}`;
  return text;
}

function auditLi(e) {
  const li = el("li", { class: "audit-entry", dataTestid: "audit-entry", dataAction: String(e.action ?? "") });
  const at = e.at ? new Date(e.at) : null;
  if (at && !Number.isNaN(at.getTime())) li.append(el("time", { dateTime: at.toISOString(), title: at.toLocaleString(), text: whenText(at) }), " ");
  li.append(el("span", { class: "audit-text", text: auditText(e) }));
  return li;
}

/** The next page of the room's moderation log (`reset`: from the newest again). */
async function loadAudit(reset = false) {
  const name = paneRoom;
  if (!name) return;
  if (reset || !audit || audit.room !== name) audit = { room: name, before: null, hasMore: true, loading: false, count: 0, fresh: true };
  const a = audit;
  if (a.loading || !a.hasMore) return;
  a.loading = true;
  renderAuditMore();
  const more = $("rs-audit-more");
  const moreFocused = document.activeElement === more;
  try {
    const query = new URLSearchParams({ limit: String(AUDIT_PAGE) });
    if (a.before !== null) query.set("before", String(a.before));
    const data = await authed("GET", `${roomPath(name)}/audit?${query}`);
    if (audit !== a) return;
    const entries = Array.isArray(data?.entries) ? data.entries : [];
    if (a.fresh) {
      $("rs-audit").replaceChildren();
      a.fresh = false;
    }
    const items = entries.map(auditLi);
    $("rs-audit").append(...items);
    a.count += items.length;
    if (entries.length) a.before = entries[entries.length - 1].id;
    a.hasMore = Boolean(data?.has_more) && entries.length > 0;
    $("rs-audit-status").textContent = a.count ? "" : "No moderation actions yet.";
    if (moreFocused && items.length && !a.hasMore) {
      items[0].tabIndex = -1;
      items[0].focus();
    }
  } catch (err) {
    if (audit === a) $("rs-audit-status").textContent = `Could not read the log: ${err.message}`;
  } finally {
    a.loading = false;
    if (audit === a) renderAuditMore();
  }
}

function renderAuditMore() {
  const more = $("rs-audit-more");
  more.hidden = !audit || !audit.hasMore || audit.fresh;
  more.disabled = Boolean(audit?.loading);
  more.textContent = audit?.loading ? "Loading…" : "Load more";
}

// -- the account pane --------------------------------------------------------------------------

async function openAccountPane() {
  if (!me || me.guest) return;
  if (sidePane === "account") {
    closeSidePane(true);
    return;
  }
  openPane("account");
  $("password-status").textContent = "";
  $("delete-status").textContent = "";
  $("acct-name").value = me.name;
  $("acct-who").textContent = `Signed in as ${visibleName(me.name)}${me.admin ? " (admin)" : ""}.`;
  $("account-pane-h").focus();
  try {
    const data = await authed("GET", "/api/me");
    const at = data?.user?.created_at ? new Date(data.user.created_at) : null;
    if (sidePane === "account" && at && !Number.isNaN(at.getTime())) {
      $("acct-who").textContent = `Signed in as ${visibleName(me.name)}${data.user.admin ? " (admin)" : ""}, since ${at.toLocaleDateString(undefined, { year: "numeric", month: "long", day: "numeric" })}.`;
    }
  } catch {
    // the name is enough
  }
}

async function changePassword() {
  const status = $("password-status");
  const old = $("pw-old").value;
  const next = $("pw-new").value;
  if (next !== $("pw-again").value) {
    status.textContent = "The two new passwords differ.";
    $("pw-again").focus();
    return;
  }
  $("pw-go").disabled = true;
  status.textContent = "Changing…";
  try {
    const data = await authed("POST", "/api/password", { old, new: next }, { retry: false });
    const n = Number(data?.revoked ?? 0);
    status.textContent = n
      ? `Password changed. ${plural(n, "other session was", "other sessions were")} signed out.`
      : "Password changed. No other session was signed in.";
    for (const id of ["pw-old", "pw-new", "pw-again"]) $(id).value = "";
  } catch (err) {
    status.textContent = err.status === 401 ? `Password not changed: the current password is wrong (${err.message}).` : `Password not changed: ${err.message}`;
  } finally {
    $("pw-go").disabled = false;
  }
}

async function deleteAccount() {
  const status = $("delete-status");
  const pass = $("delete-password").value;
  if (!pass) return;
  if (!(await ask("Delete your account?", "Your messages become “message deleted”, your files, reactions and sessions are erased, and the name is free again. This cannot be undone.", "Delete my account"))) return;
  status.textContent = "Deleting…";
  try {
    await authed("DELETE", "/api/me", { password: pass }, { retry: false });
    $("delete-password").value = "";
    signOut(true);
    $("signin-note").textContent = "Your account was deleted.";
  } catch (err) {
    status.textContent = err.status === 401 ? `Not deleted: the password is wrong (${err.message}).` : `Not deleted: ${err.message}`;
  }
}

// -- search ---------------------------------------------------------------------------

/** `snippet` as text, its highlights (`[start, end)` in code points, as the server counts) as <mark>s. */
function highlighted(snippet, spans) {
  // Array.from splits by code point: an emoji before a match must not shift its mark.
  const chars = Array.from(snippet);
  const frag = document.createDocumentFragment();
  let at = 0;
  for (const [start, end] of spans) {
    if (start < at) continue; // overlapping marks: the first one stands
    frag.append(chars.slice(at, start).join(""), el("mark", { text: chars.slice(start, end).join("") }));
    at = end;
  }
  frag.append(chars.slice(at).join(""));
  return frag;
}

function resultWhen(when) {
  const options = { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" };
  if (when.getFullYear() !== new Date().getFullYear()) options.year = "numeric";
  return when.toLocaleString(undefined, options);
}

function resultLi(result) {
  const where = !result.direct ? `#${result.room}`
    : me && result.with === me.name ? "Note to self" : `Direct with ${visibleName(result.with)}`;
  const head = el("span", { class: "result-head" },
    el("span", { class: "result-where", dataTestid: "result-where", text: where }),
    el("span", { class: "from", dataTestid: "result-from", text: visibleName(result.from) }));
  const when = result.at ? new Date(result.at) : null;
  const whenText = when && !Number.isNaN(when.getTime()) ? resultWhen(when) : "";
  if (whenText) head.append(el("time", { dateTime: when.toISOString(), title: when.toLocaleString(), text: whenText }));
  const snippet = el("span", { class: "result-snippet", dataTestid: "result-snippet" }, highlighted(result.snippet, result.highlights));
  const button = el("button", {
    type: "button", class: "result", dataTestid: "search-result",
    ariaLabel: `${where}, ${visibleName(result.from)}${whenText ? `, ${whenText}` : ""}: ${result.snippet}`,
  }, head, snippet);
  button.addEventListener("click", () => openResult(result));
  return el("li", {}, button);
}

/** The scope choices as they apply now: "this conversation" names it; guests have no direct messages. */
function renderSearchScope() {
  const here = $("search-here");
  here.disabled = !current;
  here.textContent = !current ? "This conversation"
    : current.type === "room" ? `This room (#${current.name})` : `This conversation (${visibleName(current.name)})`;
  const guest = !me || me.guest;
  $("search-direct").hidden = guest;
  $("search-direct").disabled = guest;
  const scope = $("search-scope");
  if ((guest && scope.value === "direct") || (!current && scope.value === "here")) scope.value = "all";
}

/** The filters chosen, as `client.search` takes them. */
function searchFilters() {
  const filters = {};
  const scope = $("search-scope").value;
  if (scope === "here" && current?.type === "room") filters.room = current.name;
  else if (scope === "here" && current?.type === "dm") Object.assign(filters, { direct: true, with: current.name });
  else if (scope === "direct" && me && !me.guest) filters.direct = true;
  const from = $("search-from").value.trim();
  if (from) filters.from = from;
  if ($("search-order").value === "relevance") filters.order = "relevance";
  return filters;
}

function openSearchPane() {
  closeThread(false);
  closeSidePane(false);
  closePopup(false);
  renderSearchScope();
  $("search-pane").hidden = false;
  $("layout").classList.add("with-search");
}

function closeSearch(refocus = true) {
  if ($("search-pane").hidden) return;
  $("search-pane").hidden = true;
  $("layout").classList.remove("with-search");
  if (refocus) $("search-q").focus();
}

/** A new search: the box's query with the filters chosen; an empty box just shows the pane. */
function runSearch() {
  openSearchPane();
  const q = $("search-q").value.trim();
  $("search-results").replaceChildren();
  $("search-more").hidden = true;
  $("search-error").textContent = "";
  search = null;
  if (!q) {
    $("search-status").textContent = "Type words to search for and press Enter.";
    return;
  }
  search = { q, filters: searchFilters(), cursor: null, count: 0, loading: false };
  searchPage(search);
}

/** The next page of `s` (its first without a cursor); answers to a search replaced meanwhile are dropped. */
async function searchPage(s) {
  if (!client || s.loading) return;
  s.loading = true;
  const more = $("search-more");
  const moreFocused = document.activeElement === more;
  more.disabled = true;
  $("search-status").textContent = s.cursor ? "Loading more…" : `Searching${client.state === "connected" ? "" : " (waiting for the connection)"}…`;
  let page;
  try {
    page = await client.search(s.q, { ...s.filters, limit: SEARCH_PAGE, cursor: s.cursor });
  } catch (err) {
    if (search !== s) return;
    s.loading = false;
    more.disabled = false;
    $("search-status").textContent = s.count ? plural(s.count, "result", "results") : "";
    $("search-error").textContent = `Cannot search: ${err.serverMessage || err.message}`;
    return;
  }
  if (search !== s) return;
  s.loading = false;
  const first = s.count;
  const items = page.results.map(resultLi);
  $("search-results").append(...items);
  s.count += items.length;
  s.cursor = page.cursor;
  more.hidden = !s.cursor;
  more.disabled = false;
  $("search-status").textContent = s.count
    ? `${plural(s.count, "result", "results")}${s.cursor ? ", more below" : ""}`
    : `No messages match “${s.q}”.`;
  // The button that had the focus moves on to what it loaded.
  if (moreFocused && first > 0) (items[0] ?? $("search-results").lastElementChild)?.querySelector("button")?.focus();
}

async function openResult(result) {
  // On a small screen the results cover the conversation: they make way.
  if (window.matchMedia("(max-width: 700px)").matches) closeSearch(false);
  await openAt(result.direct ? `@${result.with}` : `#${result.room}`, result.seq, result.messageId);
}

/** ↑ ↓ Home End move between results; Escape (anywhere in the pane or the box) closes them. */
function searchKeys(event) {
  if (event.key === "Escape" && !$("search-pane").hidden) {
    event.preventDefault();
    event.stopPropagation();
    closeSearch(true);
    return;
  }
  const buttons = [...$("search-results").querySelectorAll('[data-testid="search-result"]')];
  if (!buttons.length || $("search-pane").hidden) return;
  const at = buttons.indexOf(document.activeElement);
  let next = null;
  if (event.target === $("search-q")) {
    if (event.key === "ArrowDown") next = buttons[0];
  } else if (at >= 0) {
    if (event.key === "ArrowDown") next = buttons[Math.min(at + 1, buttons.length - 1)];
    else if (event.key === "ArrowUp") next = at === 0 ? $("search-q") : buttons[at - 1];
    else if (event.key === "Home") next = buttons[0];
    else if (event.key === "End") next = buttons[buttons.length - 1];
  }
  if (next) {
    event.preventDefault();
    next.focus();
  }
}

function focusSearch() {
  $("search-q").focus();
  $("search-q").select();
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
    // Over HTTP: a proxy refused WebSocket, and the client fell back to /events.
    message = `Connected as ${me ? visibleName(me.name) : "…"}${client.transport === "http" ? " over HTTP" : ""}.`;
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
    // The access token is (nearly) spent: the refresh token, if still good, gets a new one.
    if (saved?.token && saved.refreshToken && Date.parse(saved.refreshExpiresAt) > Date.now()) return saved;
    if (saved?.guest) return saved;
  } catch {
    // unreadable: start over
  }
  return null;
}

/** The session a login or refresh answer gives (`before`: the one it renews). */
function sessionFrom(data, before = null) {
  return {
    token: data.token,
    expiresAt: data.expires_at,
    refreshToken: data.refresh_token ?? null,
    refreshExpiresAt: data.refresh_expires_at ?? null,
    name: data.user?.name ?? before?.name ?? "",
    admin: Boolean(data.user?.admin ?? before?.admin),
  };
}

async function login(username, pass) {
  return sessionFrom(await api("POST", "/api/login", { username, password: pass }, null));
}

/** Is the access token good for at least `ms` more? */
function tokenFresh(ms) {
  return Boolean(session?.token) && Date.parse(session.expiresAt) - Date.now() > ms;
}

function scheduleRefresh() {
  clearTimeout(refreshTimer);
  if (!session?.token || !session.refreshToken) return;
  // A minute before it expires (the server's access tokens live 15 minutes).
  const wait = Date.parse(session.expiresAt) - Date.now() - 60 * 1000;
  refreshTimer = setTimeout(() => {
    refreshSession().then((token) => token && client?.setToken(token), () => {});
  }, Math.max(5000, Math.min(wait, 2 ** 31 - 1)));
}

/**
 * A new access token from the refresh token (POST /api/refresh), which
 * rotates: the new refresh token replaces the old one at once. One refresh at
 * a time: every caller waits for the same answer. A refused refresh token
 * (used, revoked, expired) ends the session: back to the sign-in form.
 */
function refreshSession() {
  if (refreshing) return refreshing;
  const before = session;
  if (!before?.refreshToken) return Promise.reject(Object.assign(new Error("no refresh token"), { status: 0 }));
  refreshing = (async () => {
    try {
      const data = await api("POST", "/api/refresh", { refresh_token: before.refreshToken }, null);
      if (session !== before) return null; // signed out meanwhile
      session = sessionFrom(data, before);
      saveSession();
      scheduleRefresh();
      if (client) client.token = session.token; // the next handshake uses the newest
      return session.token;
    } catch (err) {
      if ((err.status === 401 || err.status === 403) && session === before) {
        setTimeout(() => sessionEnded(`Your session has ended (${err.message}). Sign in again.`), 0);
      }
      throw err;
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

/**
 * An HTTP call with this user's token, kept fresh: renewed first when it is
 * about to expire, and once more when the server refuses it (401). `retry`
 * false: a 401 is the answer itself (a wrong password).
 */
async function authed(method, path, body = null, { retry = true } = {}) {
  if (session?.refreshToken && !tokenFresh(30000)) await refreshSession().catch(() => null);
  try {
    return await api(method, path, body);
  } catch (err) {
    if (!retry || err.status !== 401 || !session?.refreshToken) throw err;
    await refreshSession();
    return api(method, path, body);
  }
}

/** Close reasons of a connection whose session was revoked: no reconnecting, sign in again. */
const REVOKED = /signed out|banned|account deleted|sign in again|session/i;

/** The session is over (revoked, banned, deleted, refresh refused): the sign-in form says why. */
function sessionEnded(message) {
  if (!session || session.guest) return;
  signOut(true);
  $("signin-error").textContent = message;
  $("login-password").focus();
}

/** What the sign-in form says when the server closed the connection for good (1008). */
function revokedText(reason) {
  if (/account deleted/i.test(reason)) return "Your account was deleted.";
  if (/^banned$/i.test(reason.trim())) return "You are banned from this server.";
  if (/banned/i.test(reason)) return `You are ${reason.replace(/^you are /i, "").replace(/[.!]+$/, "")}.`;
  if (/signed out/i.test(reason)) return "You were signed out: this session was ended (a sign-out everywhere, or a password change). Sign in again.";
  return `Signed out: ${reason}. Sign in again.`;
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
    // Refused token (expired while away) or `token_expired`: a new one, or null (the page then says why).
    refreshToken: session.refreshToken ? () => refreshSession().catch(() => null) : null,
  });
  let directLoaded = false;
  const mine = client;
  client.on("state", () => {
    if (client !== mine) return; // signed out: this client is closing
    updateBanner();
    if (client.state === "connected") {
      refreshRoomsSoon();
      refreshUnread();
      refreshDetails();
    }
    if (client.state === "connected" && me && !me.guest && !directLoaded) {
      directLoaded = true;
      loadRecentDirect();
    }
    if (client.state === "closed") onClosed(client);
  });
  client.on("outbox", updateBanner);
  client.on("user", (user) => {
    me = user;
    if (session && !session.guest && !user.guest && session.admin !== user.admin) {
      session.admin = user.admin;
      saveSession();
    }
    $("me").textContent = `${visibleName(user.name)}${user.guest ? " (guest)" : user.admin ? " (admin)" : ""}`;
    $("account-open").hidden = user.guest;
    $("dm-section").hidden = user.guest;
    $("private-fields").hidden = user.guest;
    $("attach-label").hidden = user.guest;
    $("file").disabled = user.guest;
    renderSearchScope();
    updateBanner();
    if (settings === null) loadSettings();
    else renderSettings();
  });
  client.on("joined", (p) => {
    const c = conv(`#${p.room}`);
    c.joined = true;
    c.members = new Set((p.members ?? []).map(String));
    c.memberCount = Number(p.member_count ?? c.members.size);
    const seq = Number(p.seq ?? 0);
    // Every message after the room's last seq comes live (a replay fills what was missed).
    c.coveredFrom = Math.min(c.coveredFrom, seq + 1);
    if (Number.isInteger(p.last_read)) {
      // Signed in: the server's marker and counts (the replay that follows is in them).
      takeCounts(c, { seq: p.last_read, unread: p.unread, mentions: p.mentions, through: seq });
    } else if (c.lastRead === null) {
      c.lastRead = seq; // a guest: what came before the join is not news
    }
    goneRooms.delete(String(p.room));
    if (!current && p.room === LOBBY) show(c);
    else if (c === current) {
      renderMembers();
      if (!c.loaded) loadOlder(c);
      loadDetails(c.name);
    }
    renderNav();
  });
  client.on("left", (p) => {
    if (p.error?.code === "banned") {
      dropRoom(String(p.room), `You are banned from #${p.room} ${untilText(p.error.until)}${p.error.reason ? `: ${p.error.reason}` : "."}`);
    } else if (p.error) showError(`You are no longer in #${p.room}: ${p.error.message}`);
    else if (p.reason) showError(`You are no longer in #${p.room}: ${p.reason}`);
  });
  client.on("removed", onRemoved);
  client.on("room", onRoomFrame);
  client.on("ratelimited", onRateLimited);
  client.on("message", (item) => addItem(conv(`#${item.room}`), item, true));
  client.on("direct", (item) => addDirect(item, true));
  client.on("change", onChange);
  client.on("mention", onMention);
  client.on("refreshed", onRefreshed);
  client.on("read", onRead);
  client.on("receipt", onReceipt);
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
    if (p.code === "muted" && typeof p.room === "string") {
      setMuted(p.room, p.until ?? null); // a moderator muted us just now
    }
    showError(`${p.code}: ${p.message}`);
  });
  client.on("expired", () => {
    if (client !== mine || !session) return;
    const banner = $("banner");
    banner.dataset.expired = "true";
    $("resign").hidden = false;
    showError("Your session has expired. Sign in again to keep chatting.");
  });
  client.start();
  scheduleRefresh();
  clearInterval(clockTimer);
  clockTimer = setInterval(tick, 1000);
  refreshRooms();
  clearInterval(roomsTimer);
  roomsTimer = setInterval(refreshRooms, 15000);
  updateBanner();
}

/** The connection closed for good: why decides what the page does. */
function onClosed(c) {
  if (c.closeCode === 1008 && /token expired/i.test(c.closeReason ?? "") && session?.refreshToken) {
    // The token ran out before a new one came (a sleeping laptop): renew, and start over.
    refreshSession().then((token) => {
      if (!token) return;
      signOut(false);
      start();
    }, () => {});
  } else if (c.closeCode === 1008 && REVOKED.test(c.closeReason ?? "")) {
    sessionEnded(revokedText(c.closeReason));
  } else if (c.authRefused && session && !session.guest) {
    sessionEnded(c.closedReason);
  } else if (!c.everConnected) {
    const reason = c.closedReason;
    signOut(true);
    $("signin-error").textContent = reason;
  }
}

/**
 * Sign out here, and end the session on the server (`everywhere`: every
 * session of the user, on every device). This page closes first, so the
 * server's close of its connection is not taken for a revocation.
 */
async function logout(everywhere = false) {
  if (session?.refreshToken && !tokenFresh(5000)) await refreshSession().catch(() => null);
  const token = session?.guest ? null : session?.token ?? null;
  signOut(true);
  if (!token) return;
  try {
    await api("POST", "/api/logout", everywhere ? { everywhere: true } : {}, token);
    $("signin-note").textContent = everywhere ? "Signed out on every device." : "Signed out.";
  } catch (err) {
    $("signin-error").textContent = everywhere
      ? `Signed out here, but not everywhere: ${err.message}. Sign in and try again.`
      : `Signed out here; the server could not be told (${err.message}), so the session ends when it expires.`;
  }
}

function signOut(forget = true) {
  if (client) {
    const old = client;
    client = null;
    old.close("signed out");
  }
  clearTimeout(refreshTimer);
  clearInterval(clockTimer);
  closeSidePane(false);
  closeAsk(false);
  closeModDialog();
  details.clear();
  mutedUntil.clear();
  slowUntil.clear();
  goneRooms.clear();
  renderComposer();
  clearInterval(roomsTimer);
  clearTimeout(bannerTimer);
  closePopup(false);
  acClose();
  closeThread(false);
  setReplying(null);
  closeSearch(false);
  search = null;
  $("search-q").value = "";
  $("search-from").value = "";
  $("search-results").replaceChildren();
  $("search-status").textContent = "";
  $("search-error").textContent = "";
  directGaps = [];
  for (const c of convs.values()) {
    c.list.remove();
    clearTimeout(c.readTimer);
  }
  convs.clear();
  records.clear();
  onScreen.clear();
  seenObserver?.disconnect();
  dmSeen.clear();
  leftRooms.clear();
  directCoveredFrom = Infinity;
  settings = null;
  clearTimeout(unreadSoon);
  document.title = "roomcast";
  orphans.clear();
  orphanCount = 0;
  $("notices").replaceChildren();
  current = null;
  me = null;
  apiRooms = [];
  const name = session?.name ?? "";
  const guestName = session?.guest ?? "";
  if (forget) {
    session = null;
    saveSession();
  }
  $("app").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = "";
  $("signin-note").textContent = "";
  $("login-name").value = name;
  $("guest-name").value = guestName;
  $("errors").replaceChildren();
  delete $("banner").dataset.expired;
}

// -- sending -------------------------------------------------------------------------

function sendText(text) {
  const c = current;
  if (!c || !client) return;
  const answering = replying && replying.c === c && c.type === "room" ? replying.r : null;
  try {
    const { id } = c.type === "room"
      ? client.sendChat(c.name, text, {}, { replyTo: answering?.messageId ?? null })
      : client.sendDirect(c.name, text);
    addPending(c, id, "text", text, null, answering ? quoteOf(answering) : null);
    if (answering) setReplying(null);
    if (c.type === "room") startSlow(c.name);
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
      if (c.type === "room") startSlow(c.name);
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
    saveSession();
    start();
  });
  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = event.submitter;
    if (button) button.disabled = true;
    try {
      session = await login($("login-name").value.trim(), $("login-password").value);
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
      $("register-password").value = "";
      saveSession();
      start();
    } catch (err) {
      $("signin-error").textContent = `Registration failed: ${err.message}`;
    } finally {
      if (button) button.disabled = false;
    }
  });
  $("signout").addEventListener("click", () => logout(false));
  $("resign").addEventListener("click", () => signOut(true));
  $("retry").addEventListener("click", () => client?.reconnectNow());
  window.addEventListener("online", () => client?.reconnectNow());
  window.addEventListener("offline", updateBanner);

  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("text").value;
    if (!text.trim() || $("send").disabled) return; // muted, or slow mode counting down: the text stays
    sendText(text);
    $("text").value = "";
  });
  $("text").addEventListener("keydown", (event) => {
    if (acKey(event)) return;
    if (event.key === "ArrowUp" && !$("text").value && !event.shiftKey && !event.altKey && !event.ctrlKey && !event.metaKey && current) {
      const li = lastEditable(current);
      if (li) {
        event.preventDefault();
        startEdit(li);
      }
    } else if (event.key === "Escape" && replying) {
      event.preventDefault();
      setReplying(null);
    }
  });
  $("reply-cancel").addEventListener("click", () => {
    setReplying(null);
    $("text").focus();
  });
  for (const id of ["text", "thread-text"]) {
    $(id).addEventListener("input", () => acUpdate($(id)));
    $(id).addEventListener("click", () => acUpdate($(id)));
    $(id).addEventListener("blur", () => setTimeout(() => document.activeElement !== $(id) && ac.input === $(id) && acClose(), 150));
  }
  $("thread-text").addEventListener("keydown", (event) => {
    if (acKey(event)) return;
    if (event.key === "Escape") {
      event.preventDefault();
      closeThread(true);
    }
  });
  $("thread-composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("thread-text").value;
    if (!text.trim()) return;
    sendThreadReply(text);
    $("thread-text").value = "";
  });
  $("thread-close").addEventListener("click", () => closeThread(true));
  $("thread-older").addEventListener("click", () => loadThread());
  $("confirm-go").addEventListener("click", () => confirmed(true));
  $("confirm-cancel").addEventListener("click", () => confirmed(false));
  $("confirm-delete").addEventListener("close", () => confirmed(false)); // Escape
  document.addEventListener("pointerdown", (event) => {
    if (popup && !popup.box.contains(event.target) && !popup.opener.contains(event.target)) closePopup(false);
  });
  $("text").addEventListener("input", () => {
    if (!current || current.type !== "room" || !client || !$("text").value || mutedUntil.has(current.name)) return;
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
    loadNewerInView();
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
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    runSearch();
  });
  $("search-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    runSearch();
  });
  for (const id of ["search-scope", "search-order"]) {
    $(id).addEventListener("change", () => search && runSearch());
  }
  $("search-more").addEventListener("click", () => search && searchPage(search));
  $("search-close").addEventListener("click", () => closeSearch(true));
  $("search-q").addEventListener("keydown", searchKeys);
  $("search-pane").addEventListener("keydown", searchKeys);
  // Ctrl+K (⌘K) anywhere, or "/" outside a text field, goes to the search box.
  document.addEventListener("keydown", (event) => {
    if ($("app").hidden || document.querySelector("dialog[open]") || event.altKey || event.defaultPrevented) return;
    const inField = event.target instanceof Element && Boolean(event.target.closest("input, textarea, select, [contenteditable]"));
    const ctrlK = (event.ctrlKey || event.metaKey) && !event.shiftKey && event.key.toLowerCase() === "k";
    if (ctrlK || (event.key === "/" && !inField && !event.ctrlKey && !event.metaKey)) {
      event.preventDefault();
      focusSearch();
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
    onAttention();
  });
  window.addEventListener("focus", onAttention);
  seenObserver = new IntersectionObserver(onIntersect, { root: $("scroller"), threshold: [0, 0.5, 1] });
  $("hide-receipts").addEventListener("change", () => saveHideReceipts($("hide-receipts").checked));
  // Moderation, room settings, the account.
  $("room-settings-open").addEventListener("click", openRoomPane);
  $("account-open").addEventListener("click", openAccountPane);
  $("room-pane-close").addEventListener("click", () => closeSidePane(true));
  $("account-pane-close").addEventListener("click", () => closeSidePane(true));
  for (const id of ["room-pane", "account-pane"]) {
    $(id).addEventListener("keydown", (event) => {
      if (event.key === "Escape" && !popup) {
        event.preventDefault();
        closeSidePane(true);
      }
    });
  }
  $("rs-form").addEventListener("input", () => {
    $("rs-form").dataset.dirty = "true";
  });
  $("rs-form").addEventListener("submit", (event) => {
    event.preventDefault();
    saveRoomSettings();
  });
  $("rs-owner-form").addEventListener("submit", (event) => {
    event.preventDefault();
    handOver();
  });
  $("rs-ban-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = $("rs-ban-name").value.trim();
    if (!name || !paneRoom) return;
    $("rs-ban-name").value = "";
    askModeration("ban", paneRoom, name);
  });
  $("rs-delete").addEventListener("click", deleteRoom);
  $("rs-audit-more").addEventListener("click", () => loadAudit(false));
  $("mod-form").addEventListener("submit", (event) => {
    event.preventDefault();
    modSubmit();
  });
  $("mod-cancel").addEventListener("click", () => closeModDialog(true));
  $("mod-dialog").addEventListener("cancel", (event) => {
    event.preventDefault(); // Escape: closed here, so the focus goes back
    closeModDialog(true);
  });
  $("ask-go").addEventListener("click", () => closeAsk(true));
  $("ask-cancel").addEventListener("click", () => closeAsk(false));
  $("ask-dialog").addEventListener("close", () => closeAsk(false));
  $("password-form").addEventListener("submit", (event) => {
    event.preventDefault();
    changePassword();
  });
  $("delete-account-form").addEventListener("submit", (event) => {
    event.preventDefault();
    deleteAccount();
  });
  $("acct-signout").addEventListener("click", () => logout(false));
  $("acct-signout-all").addEventListener("click", async () => {
    if (await ask("Sign out everywhere?", "Every session of yours ends, on every device and in every tab, this one included.", "Sign out everywhere")) logout(true);
  });
  $("room-receipts").addEventListener("change", () => saveRoomReceipts($("room-receipts").checked));
}

wire();
session = loadSession();
if (session?.token && !tokenFresh(60000)) {
  // Back after the access token expired: a new one first (a refused refresh shows the form).
  refreshSession().then(() => session && start(), (err) => {
    if (session && err.status !== 401 && err.status !== 403) start(); // offline: the client retries
  });
} else if (session) start();
else $("guest-name").focus();
