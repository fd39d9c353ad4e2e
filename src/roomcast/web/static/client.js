// The roomcast client, for browsers and Node.js 20+: one connection kept alive,
// nothing lost, nothing repeated.
//
// No DOM here: the page (app.js) listens to events; the npm package "roomcast"
// (clients/js) is this same file. The semantics follow the Python client
// (docs/client.md):
// - transports: a WebSocket (/ws), or, where a proxy refuses the upgrade, the
//   HTTP fallback (/events: Server-Sent Events down, POSTs up; `EventStream`),
//   which looks like a WebSocket to the client, so everything below is the same
//   code for both. `transport: "auto"` tries the WebSocket and opens /events
//   when its handshake fails, then keeps to HTTP for 5 minutes. A browser
//   cannot read why a handshake failed, so /events is the test: a server that
//   is down refuses both, and an origin refused is refused on both, so neither
//   counts as a fallback (a server that comes up between the two tries does:
//   5 minutes on HTTP, nothing lost). In Node 20 (no global WebSocket) the
//   `ws` package is imported when first needed, or `WebSocket` is passed in;
// - every frame that expects an answer gets a random id and waits in the
//   outbox until the server answers it; it is written at once when connected
//   and written again, in order and with the same id, after every reconnect
//   (the server recognises a resent id, so nothing is stored twice);
// - room messages (by room seq) and direct messages (by the user's stream seq)
//   are delivered in order, exactly once; after a reconnect every room is
//   joined again with `since` = the last seq delivered, and the direct
//   messages after the last one are fetched with `direct_history`;
// - changes to messages (`edit`, `delete`, `reaction`) are events in the same
//   streams, with their own seqs: they go through the same ordering and
//   dedupe, so a page that reconnects applies each change once and in order;
//   `mention` arrives on the direct stream;
// - read markers: `markRead` moves the user's marker in a room or a direct
//   conversation (queued like a message, resent after a reconnect); the
//   server's `read` frames (this and the user's other connections) and
//   `receipt` frames (others who read) are events; `unread()` asks for the
//   counts of every conversation (registered users);
// - `search()` asks for a page of messages matching a query (answered by
//   frame id like `history`; a `rate_limited` answer is retried after
//   `retry_after` like any other frame);
// - moderation: `removed` (taken out of a room: it is not joined again after
//   a reconnect) and `room` (a room's settings or roles changed) are events;
//   a frame refused for a while (`rate_limited`: slow mode, or too fast) is
//   sent again after `retry_after` and a `ratelimited` event says so;
//   refusals carry the error's payload (`until`, `reason`) as `details`;
// - reconnects wait a uniform random time in [0, min(cap, first * 2^n)]
//   (full jitter; 0.5 s first, 30 s cap), reset after a stable minute;
// - `rate_limited` is retried after `retry_after`; a close with 1008 or a
//   refused sign-in stops the client for good (`closeCode`, `closeReason`:
//   the server's close; `authRefused`: the token was refused and no fresh
//   one came from `refreshToken`).

export const LOBBY = "lobby";
const DIRECT = "@direct";
const SENDABLE = new Set(["chat", "direct", "file"]);
/** The events that change a message (server to client). */
const CHANGE_EVENTS = new Set(["edit", "delete", "reaction"]);
/** WebSocket readyState values (the same for EventStream), not read from a global Node 20 lacks. */
const CONNECTING = 0;
const OPEN = 1;
const CLOSED = 3;
/** After a fallback to HTTP, reconnects use it this long before trying WebSocket again. */
const FALLBACK_MS = 5 * 60 * 1000;
/** The most text frames one POST may carry (the server refuses more). */
const POST_LINES = 64;
/** The most bytes of frames in one POST (the server reads at most 1 MiB of them). */
const POST_BYTES = 1024 * 1024;
/** The `ws` package, named in a variable so bundlers for browsers do not try to include it. */
const WS_PACKAGE = "ws";

let nodeWebSocket = null;

/** The WebSocket class where there is no global one (Node 20): the `ws` package, imported once. */
export function loadWebSocket() {
  if (typeof globalThis.WebSocket === "function") return Promise.resolve(globalThis.WebSocket);
  nodeWebSocket ??= importWs();
  return nodeWebSocket;
}

async function importWs() {
  try {
    return (await import(/* webpackIgnore: true */ /* @vite-ignore */ WS_PACKAGE)).default;
  } catch (first) {
    // Installed from a folder (npm links it), this file resolves packages from
    // its real place, outside the program's tree: look from the program too.
    const { createRequire } = await import(/* webpackIgnore: true */ "node:module");
    const { pathToFileURL } = await import(/* webpackIgnore: true */ "node:url");
    for (const base of [process.argv[1], `${process.cwd()}/`]) {
      try {
        const path = createRequire(base ?? `${process.cwd()}/`).resolve(WS_PACKAGE);
        return (await import(/* webpackIgnore: true */ pathToFileURL(path).href)).default;
      } catch { /* not there either */ }
    }
    nodeWebSocket = null; // installed later, it is found then
    throw new Error(`no WebSocket here: install the ws package or pass {WebSocket} (${first.message})`);
  }
}

/** Exponential backoff with full jitter (times in milliseconds). */
export class Backoff {
  constructor({ first = 500, factor = 2, cap = 30000, stable = 60000, random = Math.random } = {}) {
    Object.assign(this, { first, factor, cap, stable, random });
    this.attempt = 0;
  }

  /** The delay before the next attempt; counts the attempt. */
  next() {
    const ceiling = Math.min(this.cap, this.first * this.factor ** Math.min(this.attempt, 64));
    this.attempt += 1;
    return this.random() * ceiling;
  }

  /** A connection that lasted `ms` ended: start again from `first` if it was stable. */
  connectedFor(ms) {
    if (ms >= this.stable) this.attempt = 0;
  }
}

/** One ordered stream: offer() takes items in any order, returns those deliverable now. */
export class SeqStream {
  constructor(expected = null) {
    this.expected = expected;
    this.early = new Map();
  }

  startAt(expected) {
    this.expected = expected;
    for (const seq of [...this.early.keys()]) if (seq < expected) this.early.delete(seq);
    return this.ready();
  }

  offer(seq, item) {
    if (this.expected === null || seq > this.expected) {
      if (!this.early.has(seq)) this.early.set(seq, item);
      return [];
    }
    if (seq < this.expected) return []; // delivered already
    this.expected = seq + 1;
    return [item, ...this.ready()];
  }

  ready() {
    const out = [];
    if (this.expected === null) return out;
    while (this.early.has(this.expected)) {
      out.push(this.early.get(this.expected));
      this.early.delete(this.expected);
      this.expected += 1;
    }
    return out;
  }

  /**
   * Seqs below `bound` that have not come will not come (history lists
   * messages only; the seqs of changes are not in it): deliver what waits
   * below it, in order, and go on from `bound`.
   */
  skipTo(bound) {
    if (this.expected !== null && bound <= this.expected) return [];
    const out = [];
    for (const seq of [...this.early.keys()].sort((a, b) => a - b)) {
      if (seq >= bound) break;
      out.push(this.early.get(seq));
      this.early.delete(seq);
    }
    this.expected = bound;
    return [...out, ...this.ready()];
  }
}

/** History lists messages (chat, direct, file); anything else is not shown as one. */
function isMessage(m) {
  return m && (m.type === "chat" || m.type === "direct" || m.type === "file" || m.type === undefined);
}

/** {name: seq} of read markers (receipts) as a Map; empty when absent. */
function markersOf(value) {
  const out = new Map();
  if (!value || typeof value !== "object") return out;
  for (const [name, seq] of Object.entries(value)) {
    if (Number.isInteger(seq)) out.set(String(name), seq);
  }
  return out;
}

/** [[seq, n], ...] (how many have read each message) as a Map of seq to n. */
function readCountsOf(value) {
  const out = new Map();
  if (!Array.isArray(value)) return out;
  for (const pair of value) {
    if (Array.isArray(pair) && Number.isInteger(pair[0]) && Number.isInteger(pair[1])) out.set(pair[0], pair[1]);
  }
  return out;
}

/** [[start, end), ...] code point offsets that fit `length`, in order; bad pairs are dropped. */
function spansOf(value, length) {
  const out = [];
  if (!Array.isArray(value)) return out;
  for (const pair of value) {
    if (!Array.isArray(pair)) continue;
    const [start, end] = pair;
    if (Number.isInteger(start) && Number.isInteger(end) && start >= 0 && start < end && end <= length) out.push([start, end]);
  }
  return out.sort((a, b) => a[0] - b[0]);
}

/**
 * One search result as the page sees it: where (`room`, or `direct` with
 * `with`), which message (`seq` in the room, or in the user's own direct
 * stream), who and when, the snippet and its highlights (`[start, end)` in
 * code points of `snippet`, as the server counts them).
 */
export function searchResult(p) {
  const snippet = String(p.snippet ?? p.message ?? "");
  const direct = Boolean(p.direct);
  return {
    room: direct ? null : String(p.room ?? ""),
    direct,
    with: direct ? String(p.with ?? "") : null,
    thread: p.thread ? String(p.thread) : null,
    seq: Number(p.seq),
    messageId: String(p.message_id ?? ""),
    from: String(p.from ?? ""),
    at: p.at ? String(p.at) : null,
    message: String(p.message ?? ""),
    editedAt: p.edited_at ? String(p.edited_at) : null,
    snippet,
    highlights: spansOf(p.highlights, Array.from(snippet).length),
  };
}

/** A random frame id (16 url-safe characters), unique per user for a day. */
export function newId() {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_");
}

/** A binary file frame: 4-byte big-endian header length, JSON header, the bytes. */
export function fileFrame(header, bytes) {
  const head = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(4 + head.length + bytes.byteLength);
  new DataView(out.buffer).setUint32(0, head.length, false);
  out.set(head, 4);
  out.set(new Uint8Array(bytes), 4 + head.length);
  return out.buffer;
}

/** An error the server answered a frame with; `details`: the rest of its payload (`until`, `reason`, ...). */
export class SendError extends Error {
  constructor(code, message, details = {}) {
    super(`${code}: ${message}`);
    this.code = code;
    this.serverMessage = message;
    this.details = details;
  }
}

function fileOf(p) {
  return { name: String(p.name ?? "file"), mime: String(p.mime ?? ""), size: Number(p.size ?? 0), url: String(p.url ?? "") };
}

/** {emoji: [names]} as a Map of emoji to names, in the server's order. */
function reactionsOf(value) {
  const out = new Map();
  if (!value || typeof value !== "object") return out;
  for (const [emoji, names] of Object.entries(value)) {
    if (Array.isArray(names) && names.length) out.set(String(emoji), names.map(String));
  }
  return out;
}

function quoteOf(q) {
  if (!q || typeof q !== "object") return null;
  return { from: String(q.from ?? ""), message: q.deleted ? "" : String(q.message ?? ""), deleted: Boolean(q.deleted) };
}

/**
 * What a message carries besides its text: its current state (history items)
 * and what it answers (replies). Live frames carry the parts they have.
 */
function stateOf(p) {
  return {
    deleted: Boolean(p.deleted),
    editedAt: p.edited_at ? String(p.edited_at) : null,
    reactions: reactionsOf(p.reactions),
    replyTo: p.reply_to ? String(p.reply_to) : null,
    thread: p.thread ? String(p.thread) : null,
    quote: quoteOf(p.quote),
    replyCount: Number(p.reply_count ?? 0) || 0,
    mentions: Array.isArray(p.mentions) ? p.mentions.map(String) : [],
  };
}

/** A chat or file item (live frame payload or history item) as the page sees it. */
export function roomItem(type, p, timestamp) {
  const state = stateOf(p);
  return {
    kind: type === "file" ? "file" : "chat",
    room: String(p.room),
    from: String(p.from ?? ""),
    text: type === "file" || state.deleted ? "" : String(p.message ?? ""),
    seq: Number(p.seq),
    messageId: String(p.message_id ?? ""),
    timestamp: timestamp ?? p.timestamp ?? null,
    file: type === "file" && !state.deleted ? fileOf(p) : null,
    ...state,
  };
}

/** A direct message or direct file as the page sees it. */
export function directItem(type, p, timestamp) {
  const state = stateOf(p);
  return {
    kind: type === "file" ? "file" : "direct",
    from: String(p.from ?? ""),
    to: String(p.to ?? ""),
    text: type === "file" || state.deleted ? "" : String(p.message ?? ""),
    seq: Number(p.seq),
    messageId: String(p.message_id ?? ""),
    timestamp: timestamp ?? p.timestamp ?? null,
    file: type === "file" && !state.deleted ? fileOf(p) : null,
    ...state,
  };
}

/**
 * A change to a message (`edit`, `delete`, `reaction` frames): kind, the
 * message's id, who changed it, the stream's seq; `room` in a room, or
 * `direct: true` with `from`/`to` (the changed message's sender and recipient).
 */
export function changeItem(type, p, timestamp) {
  const item = {
    kind: type,
    messageId: String(p.message_id ?? ""),
    by: String(p.by ?? p.user ?? ""),
    seq: Number(p.seq),
    timestamp: timestamp ?? p.timestamp ?? null,
  };
  if (p.room !== undefined && p.room !== null) item.room = String(p.room);
  else Object.assign(item, { direct: true, from: String(p.from ?? ""), to: String(p.to ?? "") });
  if (type === "edit") {
    item.text = String(p.message ?? "");
    item.editedAt = String(p.edited_at ?? item.timestamp ?? new Date().toISOString());
  } else if (type === "reaction") {
    Object.assign(item, { emoji: String(p.emoji ?? ""), user: String(p.user ?? ""), added: Boolean(p.added) });
  }
  return item;
}

/** A `mention` (on the direct stream): someone named this user in a room. */
export function mentionItem(p, timestamp) {
  return {
    kind: "mention",
    mentionIn: String(p.room ?? ""),
    messageId: String(p.message_id ?? ""),
    from: String(p.from ?? ""),
    seq: Number(p.seq),
    timestamp: timestamp ?? p.timestamp ?? null,
  };
}

/** One event of the direct stream (a live frame or a `direct_history` item), or null. */
function directEvent(type, p, timestamp) {
  if (type === "direct" || type === "file") return directItem(type, p, timestamp);
  if (CHANGE_EVENTS.has(type)) return changeItem(type, { ...p, room: undefined }, timestamp);
  if (type === "mention") return mentionItem(p, timestamp);
  return null;
}

/**
 * The HTTP fallback transport (GET /events, POST /events/{stream}): the same
 * frames as the WebSocket, down as Server-Sent Events read with fetch (a
 * streaming body, so it can send Authorization), up as POSTs, one at a time
 * to keep their order (queued text frames go together, one JSON a line). It
 * has a WebSocket's face (readyState, send, close, on* handlers, close codes,
 * 1006 for a lost stream), so ChatClient's outbox, resume and ordering code is
 * the one for both transports.
 */
export class EventStream {
  constructor(url, { token = null, fetch = null, fallback = false } = {}) {
    this.url = url;
    this.token = token;
    /** fetch, called unbound (a browser's refuses another `this`). */
    this.fetch = fetch ?? ((...args) => globalThis.fetch(...args));
    /** Opened because the WebSocket handshake failed (ChatClient then keeps to HTTP a while). */
    this.fallback = fallback;
    this.readyState = CONNECTING;
    this.binaryType = "arraybuffer";
    /** The stream's secret id (the `open` event), which POSTs name. */
    this.stream = null;
    /** Seconds within which the server wants a POST (0: none). */
    this.heartbeat = 0;
    /** Frames waiting for the POST in flight to end. */
    this.queue = [];
    this.posting = false;
    this.lastPost = Date.now();
    this.keepalive = null;
    this.abort = new AbortController();
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    this._read().catch((err) => this._end(1006, `the event stream failed: ${err.message}`));
  }

  _get(token) {
    const headers = { Accept: "text/event-stream" };
    if (token !== null) headers.Authorization = `Bearer ${token}`;
    return this.fetch(this.url, { headers, cache: "no-store", signal: this.abort.signal });
  }

  async _read() {
    let response = await this._get(this.token);
    if (response.status === 401 && this.token !== null) {
      // A refused token: open unsigned, as a WebSocket with the token in its
      // offer does; the `auth` frame that follows gets the error the client
      // acts on (a new token from refreshToken, or sign in again).
      await response.body?.cancel().catch(() => {});
      response = await this._get(null);
    }
    if (response.status !== 200 || !response.body) {
      await response.body?.cancel().catch(() => {});
      this._end(1006, `the event stream was refused (HTTP ${response.status})`);
      return;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let event = "";
    let data = [];
    while (this.readyState !== CLOSED) {
      const { done, value } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n")) >= 0 && this.readyState !== CLOSED) {
        const line = buffer.slice(0, end).replace(/\r$/, "");
        buffer = buffer.slice(end + 1);
        if (line === "") {
          if (data.length) this._event(event || "message", data.join("\n"));
          event = "";
          data = [];
        } else if (!line.startsWith(":")) { // ": ping" comments only keep proxies awake
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "event") event = text;
          else if (field === "data") data.push(text);
        }
      }
    }
    this._end(1006, "the event stream ended");
  }

  _event(name, data) {
    if (name === "message") {
      if (this.readyState === OPEN) this.onmessage?.({ data });
      return;
    }
    let p = {};
    try {
      p = JSON.parse(data) ?? {};
    } catch { /* read as {} */ }
    if (name === "open" && this.readyState === CONNECTING) {
      this.stream = String(p.stream ?? "");
      this.heartbeat = Number(p.heartbeat ?? 0) || 0;
      this.readyState = OPEN;
      if (this.heartbeat > 0) {
        // The server drops a stream that POSTs nothing for a heartbeat: a
        // ping (no id; its pong is ignored) when the client has been quiet.
        const half = (this.heartbeat * 1000) / 2;
        this.keepalive = setInterval(() => {
          if (!this.posting && Date.now() - this.lastPost >= half) this.send(JSON.stringify({ type: "ping", payload: {} }));
        }, half / 2);
      }
      this.onopen?.({});
    } else if (name === "close") {
      this._end(Number(p.code ?? 1006), String(p.reason ?? ""));
    }
  }

  send(data) {
    if (this.readyState !== OPEN) return; // like a closed WebSocket: the outbox resends
    this.queue.push(data);
    if (!this.posting) this._post();
  }

  async _post() {
    this.posting = true;
    try {
      while (this.queue.length && this.readyState === OPEN) {
        let body;
        let type;
        if (typeof this.queue[0] !== "string") {
          body = this.queue.shift();
          type = "application/octet-stream"; // one file frame
        } else {
          const lines = [];
          let size = 0; // bytes as UTF-16 code units: at most 3 bytes of UTF-8 each
          while (lines.length < POST_LINES && typeof this.queue[0] === "string"
                 && (lines.length === 0 || size + this.queue[0].length * 3 <= POST_BYTES)) {
            size += this.queue[0].length * 3 + 1;
            lines.push(this.queue.shift());
          }
          body = `${lines.join("\n")}\n`;
          type = "application/x-ndjson";
        }
        this.lastPost = Date.now();
        const response = await this.fetch(`${this.url}/${encodeURIComponent(this.stream)}`, {
          method: "POST", headers: { "Content-Type": type }, body, cache: "no-store", signal: this.abort.signal,
        });
        await response.body?.cancel().catch(() => {});
        if (response.status !== 204) {
          // 404: the stream ended, or lives on another node; 413 and 400 close it as 1009 and 1007 do.
          const code = response.status === 413 ? 1009 : response.status === 400 ? 1007 : 1006;
          this._end(code, `a POST was refused (HTTP ${response.status})`);
        }
      }
    } catch (err) {
      this._end(1006, `a POST failed: ${err.message}`);
    } finally {
      this.posting = false;
    }
  }

  /** Close it; the close event follows later, as a WebSocket's does. */
  close(code = 1000, reason = "") {
    if (this.readyState === CLOSED) return;
    this._stop();
    queueMicrotask(() => this.onclose?.({ code, reason }));
  }

  _stop() {
    this.readyState = CLOSED;
    clearInterval(this.keepalive);
    this.queue = [];
    this.abort.abort();
  }

  _end(code, reason) {
    if (this.readyState === CLOSED) return;
    this._stop();
    this.onclose?.({ code, reason });
  }
}

/**
 * The connection. States: "idle", "connecting" (never connected yet),
 * "connected", "reconnecting" (waiting `retryAt`, or trying when it is null),
 * "closed" (for good: `closedReason`).
 *
 * Events (client.on(name, fn)): state, user, joined, left, message, direct,
 * change (edit, delete, reaction: in a room or direct), mention, refreshed
 * (current state of messages shown before a long absence), presence, typing,
 * read (the user's marker moved: `{room|direct, with?, seq, unread, mentions}`),
 * receipt (someone read: `{room|direct, user, seq}`), servererror, expired,
 * outbox, acked, failed (`{id, kind, meta, code, message, details}`),
 * removed (taken out of a room: `{room, by, reason?, banned?, until?}`), room
 * (a room's settings and roles: the `room` payload), ratelimited (a frame
 * waits `retryAfter` ms before it is sent again: `{id, kind, room, retryAfter}`),
 * frame (every frame the server sent, as it came).
 *
 * `transport`: "auto" (WebSocket, and /events when its handshake fails),
 * "websocket" or "http"; `client.transport` is the one in use. `eventsUrl`:
 * where /events is (default: `url` with http(s) and /events for /ws).
 * `WebSocket`, `fetch`: the implementations to use (default: the global ones;
 * in Node 20 the `ws` package).
 */
export class ChatClient {
  constructor({ url, token = null, guest = null, backoff = null, refreshToken = null,
    pingInterval = 20000, pingTimeout = 20000, openTimeout = 10000, maxQueue = 1000,
    transport = "auto", eventsUrl = null, WebSocket = null, fetch = null } = {}) {
    Object.assign(this, { url, token, guest, refreshToken, pingInterval, pingTimeout, openTimeout, maxQueue });
    if (!["auto", "websocket", "http"].includes(transport)) throw new TypeError(`unknown transport ${transport}`);
    /** The transport asked for; `transport` is the one in use. */
    this.transportOption = transport;
    this.transport = transport === "http" ? "http" : "websocket";
    /** Until when (ms) reconnects go straight to HTTP after a fallback. */
    this.httpUntil = 0;
    this.eventsUrl = eventsUrl;
    /** null until first needed where there is no global one (Node 20: `ws`). */
    this.WebSocket = WebSocket ?? (typeof globalThis.WebSocket === "function" ? globalThis.WebSocket : null);
    this.fetch = fetch;
    this.backoff = backoff ?? new Backoff();
    this.state = "idle";
    this.retryAt = null;
    this.closedReason = null;
    this.user = null;
    this.streams = new Map([[LOBBY, new SeqStream()]]);
    this.outbox = new Map();
    this.asks = new Map();
    this.listeners = new Map();
    this.ws = null;
    this.conn = 0;
    this.everConnected = false;
    this.closeCode = null;
    this.closeReason = null;
    this.authRefused = false;
    this.timers = {};
  }

  on(name, fn) {
    if (!this.listeners.has(name)) this.listeners.set(name, new Set());
    this.listeners.get(name).add(fn);
    return () => this.listeners.get(name).delete(fn);
  }

  emit(name, detail) {
    for (const fn of this.listeners.get(name) ?? []) {
      try {
        fn(detail);
      } catch (err) {
        console.warn("roomcast: a listener failed", err); // eslint-disable-line no-console
      }
    }
  }

  /** Messages (chat, direct, file) waiting for the server's ack. */
  get queued() {
    let n = 0;
    for (const out of this.outbox.values()) if (SENDABLE.has(out.kind)) n += 1;
    return n;
  }

  get rooms() {
    return [...this.streams.keys()].filter((key) => key !== DIRECT);
  }

  lastSeq(room) {
    const stream = this.streams.get(room);
    return stream && stream.expected !== null ? stream.expected - 1 : null;
  }

  // -- life cycle -----------------------------------------------------------

  start() {
    if (this.state === "idle") this._connect();
  }

  /** Try now instead of waiting out the backoff (the "Retry now" button, `online`). */
  reconnectNow() {
    if (this.state === "reconnecting" && this.retryAt !== null) this._connect();
  }

  close(reason = "closed by the page") {
    const ws = this.ws;
    this._detach();
    if (ws) {
      try { ws.close(1000); } catch { /* closing anyway */ }
    }
    this._finish(reason);
  }

  _setState(state, extra = {}) {
    this.state = state;
    this.emit("state", { state, retryAt: this.retryAt, reason: extra.reason ?? null, queued: this.queued, transport: this.transport });
  }

  _finish(reason) {
    if (this.state === "closed") return;
    this._clearTimers();
    this.closedReason = reason;
    this.retryAt = null;
    for (const out of this.outbox.values()) out.reject(new SendError("closed", reason));
    this.outbox.clear();
    this._setState("closed", { reason });
  }

  _clearTimers() {
    for (const key of Object.keys(this.timers)) {
      clearTimeout(this.timers[key]);
      clearInterval(this.timers[key]);
    }
    this.timers = {};
  }

  _connect() {
    this._clearTimers();
    this.retryAt = null;
    this._setState(this.everConnected ? "reconnecting" : "connecting");
    const http = this.transportOption === "http" || (this.transportOption === "auto" && Date.now() < this.httpUntil);
    this._open(http ? "http" : "websocket", false);
  }

  /** Open one connection over `transport`; `fallback`: after a failed WebSocket handshake. */
  _open(transport, fallback) {
    const conn = ++this.conn;
    if (transport === "websocket" && this.WebSocket === null) {
      loadWebSocket().then((WebSocketClass) => {
        this.WebSocket = WebSocketClass;
        if (this.conn === conn && this.state !== "closed") this._open(transport, fallback);
      }, (err) => {
        if (this.conn !== conn || this.state === "closed") return;
        if (this.transportOption === "auto") this._open("http", true);
        else this._finish(err.message); // trying again would fail the same way
      });
      return;
    }
    let ws;
    try {
      ws = transport === "http"
        ? new EventStream(this._eventsUrl(), { token: this.token, fetch: this.fetch, fallback })
        : new this.WebSocket(this.url, this._subprotocols());
    } catch (err) {
      this._retry(`cannot connect: ${err.message}`);
      return;
    }
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.transport = transport;
    ws.onopen = () => this._opened(ws, conn);
    ws.onmessage = (event) => this._frame(ws, event.data);
    ws.onclose = (event) => this._closed(ws, event.code, event.reason);
    ws.onerror = () => {}; // a close event follows
    clearTimeout(this.timers.open);
    this.timers.open = setTimeout(() => {
      if (this.ws === ws && ws.readyState === CONNECTING) this._lost(ws, "connecting timed out");
    }, this.openTimeout);
  }

  /** GET /events: `eventsUrl`, or `url` with http(s) for ws(s) and /events for /ws. */
  _eventsUrl() {
    if (this.eventsUrl) return this.eventsUrl;
    const url = new URL(this.url, globalThis.location?.href);
    url.protocol = url.protocol === "wss:" || url.protocol === "https:" ? "https:" : "http:";
    url.pathname = `${url.pathname.replace(/\/ws\/?$/, "").replace(/\/$/, "")}/events`;
    url.search = "";
    url.hash = "";
    return url.href;
  }

  /**
   * With a token, sign in on the handshake too: a browser cannot set
   * Authorization, so the token rides in the subprotocol offer (the server
   * selects "roomcast", never echoing the token). Only a connection signed in
   * on its handshake may send frames over 64 KiB (files); `auth` still follows
   * once connected, as before, for the expiry and renewal flow.
   */
  _subprotocols() {
    return this.token !== null ? ["roomcast", `roomcast.bearer.${this.token}`] : [];
  }

  _detach() {
    const ws = this.ws;
    if (ws) ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    this.ws = null;
    for (const ask of this.asks.values()) ask.reject(new Error("connection lost"));
    this.asks.clear();
  }

  /** Give up on a connection without waiting for its close event (a dead peer). */
  _lost(ws, reason) {
    if (ws !== this.ws) return;
    try { ws.close(); } catch { /* gone anyway */ }
    this._closed(ws, null, reason);
  }

  _closed(ws, code, reason) {
    if (ws !== this.ws) return;
    if (!this.openedAt && this.transportOption === "auto" && this.transport === "websocket") {
      // The handshake failed: a proxy may refuse WebSocket. Try /events now;
      // if the server is down or refuses us, that fails too and we wait.
      this._detach();
      this._open("http", true);
      return;
    }
    this._detach();
    if (this.openedAt) this.backoff.connectedFor(Date.now() - this.openedAt);
    this.openedAt = null;
    if (code === 1008) {
      // Signed out (revoked), banned, abuse: trying again would be refused too.
      this.closeCode = code;
      this.closeReason = reason || "";
      this._finish(`closed by the server: ${reason || "policy violation"}`);
      return;
    }
    if (code === 1009) {
      // A frame too big for the server: sending it again would only repeat this.
      for (const out of [...this.outbox.values()]) {
        if (out.kind === "file" && out.sentOn === this.conn) this._fail(out, "too_large", "the file is larger than the server accepts");
      }
    }
    this._retry(code ? `closed with ${code}${reason ? ` ${reason}` : ""}` : reason);
  }

  _retry(reason) {
    if (this.state === "closed") return;
    this._clearTimers();
    const delay = this.backoff.next();
    this.retryAt = Date.now() + delay;
    this.timers.retry = setTimeout(() => this._connect(), delay);
    this._setState(this.everConnected ? "reconnecting" : "connecting", { reason });
  }

  _opened(ws, conn) {
    clearTimeout(this.timers.open);
    this.openedAt = Date.now();
    if (ws.fallback) this.httpUntil = this.openedAt + FALLBACK_MS;
    this.timers.ping = setInterval(() => this._ping(ws), this.pingInterval);
    this._resume(ws, conn).catch((err) => {
      if (err instanceof SendError && err.code === "auth") {
        this.close(err.serverMessage);
      } else if (this.ws === ws) {
        this._lost(ws, err.message);
      }
    });
  }

  _ping(ws) {
    if (this.ws !== ws || this.timers.pong) return;
    const id = `ping-${newId()}`;
    this.pingId = id;
    ws.send(JSON.stringify({ type: "ping", id, payload: {} }));
    this.timers.pong = setTimeout(() => this._lost(ws, "the server stopped answering"), this.pingTimeout);
  }

  /** A request on this connection only (not queued, not resent). */
  _ask(ws, type, payload) {
    const id = newId();
    return new Promise((resolve, reject) => {
      this.asks.set(id, { resolve, reject });
      ws.send(JSON.stringify({ type, id, payload }));
    });
  }

  async _resume(ws, conn) {
    if (this.token !== null) {
      let reply = await this._ask(ws, "auth", { token: this.token });
      if (reply.type === "error" && this.refreshToken) {
        const token = await this.refreshToken().catch(() => null);
        if (token) {
          this.token = token;
          reply = await this._ask(ws, "auth", { token });
        }
      }
      if (reply.type === "error") {
        this.authRefused = true;
        this.emit("expired", reply.payload);
        throw new SendError("auth", `Your sign-in is no longer valid (${reply.payload.message}). Sign in again.`);
      }
      this._setUser(reply.payload.user);
    } else if (this.guest !== null) {
      const reply = await this._ask(ws, "auth", { guest: this.guest });
      if (reply.type === "error") {
        const why = `The nickname ${this.guest} was refused: ${reply.payload.message}`;
        // On a reconnect the old connection may still hold the name: try again later.
        if (this.everConnected) throw new Error(why);
        throw new SendError("auth", why);
      }
      this._setUser(reply.payload.user);
    }
    for (const [room, stream] of [...this.streams]) {
      if (room === DIRECT) continue;
      const payload = { room };
      const resumed = stream.expected !== null;
      if (resumed) payload.since = stream.expected - 1;
      const reply = await this._ask(ws, "join", payload);
      if (reply.type === "joined") {
        this._joined(reply.payload, resumed);
        this.emit("joined", reply.payload);
        await this._pageBack(ws, room, reply.payload);
      } else if (reply.type === "error") {
        this.streams.delete(room);
        this.emit("left", { room, error: reply.payload });
      }
    }
    if (this.token !== null) await this._catchUpDirect(ws);
    // The connection may have ended while the last answer was read (an event
    // stream can carry an answer and its close in one chunk): `_write` then
    // writes nothing, and the next connection resends.
    while (this.ws === ws && ws.readyState === OPEN) {
      const waiting = [...this.outbox.values()].filter((o) => o.sentOn !== conn);
      if (!waiting.length) break;
      for (const out of waiting) this._write(out);
    }
    if (this.ws !== ws) throw new Error("connection lost");
    this.everConnected = true;
    this._setState("connected");
  }

  /**
   * Read what a capped replay left out (`replay_from`) with `history`: the
   * stream holds the replayed messages until these older ones fill the gap,
   * so every missed message is still shown once, in order.
   */
  async _pageBack(ws, room, joined) {
    const stream = this.streams.get(room);
    if (!stream || !Number.isInteger(joined.replay_from)) return;
    // Partly pruned (expected null): page back to the oldest message kept.
    const pruned = stream.expected === null;
    stream.pruned = false; // the replay waits in the stream: it starts here, not at its first
    const floor = pruned ? 1 : stream.expected;
    const pages = [];
    let before = joined.replay_from;
    while (before > floor) {
      const limit = Math.min(100, before - floor);
      const reply = await this._ask(ws, "history", { room, before, limit });
      const items = reply.type === "history" ? reply.payload.messages ?? [] : [];
      if (!items.length) break;
      pages.push(items);
      before = Math.min(...items.map((m) => Number(m.seq)));
      if (!reply.payload.has_more) break;
    }
    const items = pages.reverse().flat().filter(isMessage).map((m) => roomItem(m.type, { room, ...m }, m.timestamp));
    const lowest = items.length ? items[0].seq : joined.replay_from;
    if (pruned || stream.expected < lowest) {
      // What cannot be read (pruned, or refused while paging) is skipped, or
      // the room would wait for it for ever.
      for (const ready of stream.startAt(lowest)) this._emitItem(ready);
    }
    for (const item of items) this._deliver(room, item);
    // The seqs history left out are changes: the items carry their result.
    for (const ready of stream.skipTo(joined.replay_from)) this._emitItem(ready);
    // Changes before the replay to messages shown before the absence were not
    // replayed: read those messages' current state once.
    if (!pruned && floor > 1) {
      const reply = await this._ask(ws, "history", { room, before: floor, limit: 100 });
      const older = reply.type === "history" ? reply.payload.messages ?? [] : [];
      const refreshed = older.filter(isMessage).map((m) => roomItem(m.type, { room, ...m }, m.timestamp));
      if (refreshed.length) this.emit("refreshed", { room, messages: refreshed });
    }
  }

  async _catchUpDirect(ws) {
    let stream = this.streams.get(DIRECT);
    if (!stream) {
      stream = new SeqStream();
      this.streams.set(DIRECT, stream);
    }
    if (stream.expected === null) {
      const reply = await this._ask(ws, "direct_history", { limit: 1 });
      if (reply.type === "direct_history" && stream.expected === null) {
        for (const item of stream.startAt(Number(reply.payload.last_seq ?? 0) + 1)) this._emitItem(item);
      }
      return;
    }
    while (true) {
      const since = stream.expected - 1;
      const reply = await this._ask(ws, "direct_history", { since, limit: 100 });
      if (reply.type !== "direct_history") return;
      for (const m of reply.payload.messages ?? []) {
        // An event this page does not know still takes its seq, or the stream would wait for it.
        this._deliver(DIRECT, directEvent(m.type, m, m.timestamp) ?? { kind: "skip", seq: Number(m.seq) });
      }
      if (!reply.payload.has_more || stream.expected - 1 === since) return;
    }
  }

  _setUser(user) {
    if (!user) return;
    this.user = { name: String(user.name ?? ""), guest: Boolean(user.guest), admin: Boolean(user.admin) };
    this.emit("user", this.user);
  }

  _joined(payload, resumed) {
    const stream = this.streams.get(String(payload.room));
    if (!stream) return;
    if (stream.expected === null) {
      for (const item of stream.startAt(Number(payload.seq ?? 0) + 1)) this._emitItem(item);
    } else if (resumed && payload.recovered === false) {
      // Some missed messages were pruned: take the replay from its first item.
      stream.expected = null;
      stream.pruned = true;
    }
  }

  _deliver(key, item) {
    const stream = this.streams.get(key);
    if (!stream) return;
    if (stream.expected === null && stream.pruned) {
      stream.pruned = false;
      for (const ready of stream.startAt(Math.min(item.seq, ...stream.early.keys()))) this._emitItem(ready);
    }
    for (const ready of stream.offer(item.seq, item)) this._emitItem(ready);
  }

  _emitItem(item) {
    if (CHANGE_EVENTS.has(item.kind)) this.emit("change", item);
    else if (item.kind === "mention") this.emit("mention", item);
    else if (item.kind !== "skip") this.emit(item.room !== undefined ? "message" : "direct", item);
  }

  // -- reading --------------------------------------------------------------

  _frame(ws, data) {
    if (ws !== this.ws || typeof data !== "string") return;
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      console.warn("roomcast: a frame that is not JSON was ignored"); // eslint-disable-line no-console
      return;
    }
    if (!frame || typeof frame.type !== "string") return;
    this.emit("frame", frame);
    const p = frame.payload && typeof frame.payload === "object" ? frame.payload : {};
    const id = typeof frame.id === "string" ? frame.id : null;
    if (frame.type === "pong" && id !== null && id === this.pingId) {
      clearTimeout(this.timers.pong);
      delete this.timers.pong;
      return;
    }
    if (id !== null && this.asks.has(id)) {
      const ask = this.asks.get(id);
      this.asks.delete(id);
      ask.resolve({ type: frame.type, payload: p });
      return;
    }
    switch (frame.type) {
      case "system":
        this._setUser(p.user);
        break;
      case "auth":
        if (p.ok) this._setUser(p.user);
        break;
      case "joined":
        this._joined(p, false);
        this.emit("joined", p);
        break;
      case "left":
        // Unasked (no id): the server took us out (a new identity may not be
        // in the room), so a reconnect must not join it again.
        if (id === null) this.streams.delete(String(p.room));
        this.emit("left", p);
        break;
      case "chat":
        this._deliver(String(p.room), roomItem("chat", p, frame.timestamp));
        break;
      case "file":
        if (p.room !== undefined) this._deliver(String(p.room), roomItem("file", p, frame.timestamp));
        else this._deliver(DIRECT, directItem("file", p, frame.timestamp));
        break;
      case "direct":
        this._deliver(DIRECT, directItem("direct", p, frame.timestamp));
        break;
      case "edit":
      case "delete":
      case "reaction":
        // A change is an event of its conversation's stream, with that stream's seq.
        if (p.room !== undefined && p.room !== null) this._deliver(String(p.room), changeItem(frame.type, p, frame.timestamp));
        else this._deliver(DIRECT, changeItem(frame.type, p, frame.timestamp));
        break;
      case "mention":
        this._deliver(DIRECT, mentionItem(p, frame.timestamp));
        break;
      case "presence":
        if (id === null) this.emit("presence", p);
        break;
      case "typing":
        this.emit("typing", p);
        break;
      case "read":
        // The user's marker moved (here or on another device); an answer to
        // our own `read` carries it too, also when it did not move.
        this.emit("read", p);
        break;
      case "receipt":
        this.emit("receipt", p);
        break;
      case "removed":
        // Out of the room now (removed, banned, or the room deleted): a
        // reconnect must not join it again, and nothing more of it comes.
        this.streams.delete(String(p.room));
        this.emit("removed", p);
        break;
      case "room":
        this.emit("room", p);
        break;
      case "error":
        if (id === null || !this.outbox.has(id)) {
          if (p.code === "token_expired") this._tokenExpired();
          this.emit("servererror", p);
        }
        break;
      default:
        break;
    }
    if (id !== null) this._answer(id, frame.type, p);
  }

  _answer(id, type, p) {
    const out = this.outbox.get(id);
    if (!out) return;
    if (type === "error") {
      if (p.code === "rate_limited") {
        const wait = Number(p.retry_after ?? 1000);
        this.emit("ratelimited", { id, kind: out.kind, room: out.room, retryAfter: wait });
        this.timers[`rate-${id}`] = setTimeout(() => {
          delete this.timers[`rate-${id}`];
          out.sentOn = -1;
          if (this.state === "connected") this._write(out);
        }, wait);
        return;
      }
      const { code, message, ...details } = p;
      this._fail(out, String(code ?? "error"), String(message ?? ""), details);
      return;
    }
    this.outbox.delete(id);
    out.resolve({ type, payload: p });
    if (SENDABLE.has(out.kind)) {
      this.emit("acked", { id, kind: out.kind, meta: out.meta, payload: p });
      this.emit("outbox", this.queued);
    }
  }

  _fail(out, code, message, details = {}) {
    this.outbox.delete(out.id);
    out.reject(new SendError(code, message, details));
    if (SENDABLE.has(out.kind)) {
      this.emit("failed", { id: out.id, kind: out.kind, meta: out.meta, room: out.room, code, message, details });
      this.emit("outbox", this.queued);
    }
  }

  _tokenExpired() {
    if (!this.refreshToken) {
      this.emit("expired", { code: "token_expired" });
      return;
    }
    this.refreshToken()
      .then((token) => (token ? this.setToken(token) : this.emit("expired", { code: "token_expired" })))
      .catch(() => this.emit("expired", { code: "token_expired" }));
  }

  // -- sending --------------------------------------------------------------

  /** Queue a frame the server answers; returns {id, promise} (the answer, or a SendError). */
  send(type, payload, meta = null, data = null) {
    if (this.state === "closed") throw new SendError("closed", this.closedReason ?? "closed");
    if (this.outbox.size >= this.maxQueue) throw new SendError("queue_full", "too many messages are waiting already");
    const id = meta?.id ?? newId();
    let resolve;
    let reject;
    const promise = new Promise((res, rej) => { resolve = res; reject = rej; });
    promise.catch(() => {}); // callers that do not wait are told by the "failed" event
    const out = {
      id, kind: type, meta, sentOn: -1, resolve, reject, room: payload?.room ?? null,
      data: data ?? JSON.stringify({ type, id, payload }),
    };
    this.outbox.set(id, out);
    if (this.state === "connected") this._write(out);
    if (SENDABLE.has(type)) this.emit("outbox", this.queued);
    return { id, promise };
  }

  _write(out) {
    const ws = this.ws;
    if (!ws || ws.readyState !== OPEN || out.sentOn === this.conn) return;
    out.sentOn = this.conn;
    ws.send(out.data);
  }

  /** A chat message; `replyTo`: the id of the message it answers (a reply, in its thread). */
  sendChat(room, text, meta = {}, { replyTo = null } = {}) {
    const payload = { room, message: text };
    if (replyTo) payload.reply_to = replyTo;
    return this.send("chat", payload, meta);
  }

  /** Change the text of your message (room or direct): {id, promise} like send. */
  edit(messageId, text, meta = {}) {
    return this.send("edit", { message_id: messageId, message: text }, meta);
  }

  /** Delete a message (yours; anyone's in a room you own or moderate, or as an admin). */
  delete(messageId, meta = {}) {
    return this.send("delete", { message_id: messageId }, meta);
  }

  /** Add your reaction (one emoji, or :name:) to a message. */
  react(messageId, emoji, meta = {}) {
    return this.send("react", { message_id: messageId, emoji }, meta);
  }

  /** Take your reaction back. */
  unreact(messageId, emoji, meta = {}) {
    return this.send("unreact", { message_id: messageId, emoji }, meta);
  }

  sendDirect(to, text, meta = {}) {
    return this.send("direct", { to, message: text }, meta);
  }

  /** Send a file (ArrayBuffer) to {room} or {to}. */
  sendFile(target, name, mime, bytes, meta = {}) {
    const id = newId();
    const header = { ...target, name, mime: mime || "application/octet-stream", id };
    const sent = this.send("file", null, { ...meta, id }, fileFrame(header, bytes));
    const out = this.outbox.get(sent.id);
    if (out) out.room = target.room ?? null;
    return sent;
  }

  join(room) {
    const fresh = !this.streams.has(room);
    if (fresh) this.streams.set(room, new SeqStream());
    const { promise } = this.send("join", { room });
    return promise.catch((err) => {
      if (fresh) this.streams.delete(room);
      throw err;
    });
  }

  leave(room) {
    this.streams.delete(room);
    return this.send("leave", { room }).promise;
  }

  /**
   * A page of a room's history, oldest first: {messages, hasMore, hasNewer}.
   * Items carry each message's current state. `thread`: a root message id
   * (the root and its replies); `around`: a seq (messages before and after it).
   */
  async history(room, before = null, limit = 50, { thread = null, around = null } = {}) {
    const payload = { room, limit };
    if (before !== null) payload.before = before;
    if (thread !== null) payload.thread = thread;
    if (around !== null) payload.around = around;
    const reply = await this.send("history", payload).promise;
    const items = (reply.payload.messages ?? []).filter(isMessage).map((m) => roomItem(m.type, { room, ...m }, m.timestamp));
    return {
      messages: items,
      hasMore: Boolean(reply.payload.has_more),
      hasNewer: Boolean(reply.payload.has_newer),
      receipts: markersOf(reply.payload.receipts),
      readCounts: readCountsOf(reply.payload.read_counts),
    };
  }

  /**
   * A page of the user's direct messages, oldest first: {messages, hasMore,
   * hasNewer, lastSeq, receipts} (receipts: peer -> the seq of this user's
   * stream they read up to). `around`: a seq of the user's stream (messages
   * before and after it; `hasNewer` says whether newer ones follow).
   */
  async directHistory({ before = null, limit = 50, around = null } = {}) {
    const payload = { limit };
    if (before !== null) payload.before = before;
    if (around !== null) payload.around = around;
    const reply = await this.send("direct_history", payload).promise;
    const items = (reply.payload.messages ?? []).filter(isMessage).map((m) => directItem(m.type, m, m.timestamp));
    return {
      messages: items,
      hasMore: Boolean(reply.payload.has_more),
      hasNewer: Boolean(reply.payload.has_newer),
      lastSeq: reply.payload.last_seq,
      receipts: markersOf(reply.payload.receipts),
    };
  }

  /**
   * Move this user's read marker (never back): `{room}` in a room, `{with: peer}`
   * in one direct conversation (`seq` of the user's own stream), `{}` for the
   * whole direct stream. {id, promise}: the answer is a `read` frame (also an event).
   */
  markRead({ room = null, with: peer = null } = {}, seq) {
    const payload = room !== null ? { room, seq } : { direct: true, seq };
    if (room === null && peer !== null) payload.with = peer;
    return this.send("read", payload);
  }

  /** The unread counts of every conversation (registered users): the `unread` payload. */
  async unread() {
    const reply = await this.send("unread", {}).promise;
    return reply.payload;
  }

  /**
   * A page of the messages this user may read that match `query`, newest
   * first (or best first with `order: "relevance"`): {results, cursor}
   * (`cursor`: pass it back with the same query and filters for the next
   * page; null on the last). Filters: `room`, or `direct` (with `with`: one
   * conversation); `from`, `after`, `before`, `limit`. A query the server
   * cannot read rejects with a SendError whose `serverMessage` says why.
   */
  async search(query, { room = null, direct = false, with: peer = null, from = null, after = null,
    before = null, order = null, limit = null, cursor = null } = {}) {
    const payload = { q: query };
    if (room !== null) payload.room = room;
    if (direct) payload.direct = true;
    if (direct && peer !== null) payload.with = peer;
    if (from !== null) payload.from = from;
    if (after !== null) payload.after = after;
    if (before !== null) payload.before = before;
    if (order !== null) payload.order = order;
    if (limit !== null) payload.limit = limit;
    if (cursor !== null) payload.cursor = cursor;
    const reply = await this.send("search", payload).promise;
    const results = Array.isArray(reply.payload.results) ? reply.payload.results : [];
    return {
      results: results.filter((r) => r && typeof r === "object").map(searchResult),
      cursor: typeof reply.payload.cursor === "string" && reply.payload.cursor ? reply.payload.cursor : null,
    };
  }

  async presence(room) {
    const reply = await this.send("presence", { room }).promise;
    return (reply.payload.members ?? []).map(String);
  }

  /** Tell a room this user is typing (dropped while offline). */
  typing(room) {
    if (this.state === "connected" && this.ws && this.ws.readyState === OPEN) {
      this.ws.send(JSON.stringify({ type: "typing", payload: { room } }));
    }
  }

  /** Use a new token from now on (sent at once when connected). */
  setToken(token) {
    this.token = token;
    if (this.state === "connected") {
      this.send("auth", { token }).promise.catch((err) => this.emit("servererror", { code: err.code, message: err.serverMessage }));
    }
  }
}
