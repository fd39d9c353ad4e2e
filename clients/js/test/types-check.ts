// Uses the whole public API through the package name, as a TypeScript program
// would; `tsc --noEmit --strict -p clients/js` checks it (tests/integration/test_js_client.py).
import WebSocket from "ws";
import {
  Backoff, ChatClient, EventStream, LOBBY, SendError, SeqStream, changeItem, directItem, fileFrame,
  loadWebSocket, mentionItem, newId, roomItem, searchResult,
} from "roomcast";
import type {
  ChangeItem, ChatClientEvents, DirectItem, ErrorPayload, MentionItem, RoomItem, ServerFrame, StateEvent,
  Transport, WebSocketConstructor,
} from "roomcast";

const backoff: Backoff = new Backoff({ first: 100, factor: 2, cap: 1000, stable: 5000, random: Math.random });
const delay: number = backoff.next();
backoff.connectedFor(delay);

const client = new ChatClient({
  url: "ws://127.0.0.1:8765/ws",
  token: null,
  guest: "ann",
  backoff,
  refreshToken: async () => null,
  pingInterval: 20000,
  pingTimeout: 20000,
  openTimeout: 10000,
  maxQueue: 100,
  transport: "auto",
  eventsUrl: null,
  WebSocket: WebSocket as unknown as WebSocketConstructor,
  fetch: (input, init) => fetch(input, init),
});

const stops: Array<() => void> = [
  client.on("state", (s: StateEvent) => {
    const t: Transport = s.transport;
    console.log(s.state, s.retryAt, s.reason, s.queued, t);
  }),
  client.on("user", (u) => console.log(u.name, u.guest, u.admin)),
  client.on("joined", (j) => console.log(j.room, j.seq, j.members.length, j.recovered, j.replay_from)),
  client.on("left", (l) => console.log(l.room, l.reason, l.error?.code)),
  client.on("message", (m: RoomItem) => console.log(m.room, m.seq, m.text, m.file?.url, m.reactions.get("👍"))),
  client.on("direct", (d: DirectItem) => console.log(d.from, d.to, d.seq, d.text)),
  client.on("change", (c: ChangeItem) => console.log(c.kind, c.messageId, c.room ?? c.to, c.text, c.emoji)),
  client.on("mention", (m: MentionItem) => console.log(m.mentionIn, m.from, m.seq)),
  client.on("refreshed", (r) => console.log(r.room, r.messages.length)),
  client.on("presence", (p) => console.log("event" in p ? p.event : p.members)),
  client.on("typing", (t) => console.log(t.room, t.user)),
  client.on("read", (r) => console.log(r.room, r.direct, r.with, r.seq, r.unread, r.mentions)),
  client.on("receipt", (r) => console.log(r.room, r.user, r.seq)),
  client.on("servererror", (e) => console.log(e.code, e.message)),
  client.on("expired", (e) => console.log(e.code)),
  client.on("outbox", (n: number) => console.log(n)),
  client.on("acked", (a) => console.log(a.id, a.kind, a.meta, a.payload.seq, a.payload.message_id)),
  client.on("failed", (f) => console.log(f.id, f.code, f.message, f.details, f.room)),
  client.on("removed", (r) => console.log(r.room, r.by, r.reason, r.banned, r.until)),
  client.on("room", (r) => console.log(r.room, r.owner, r.moderators, r.topic, r.slow_mode, r.receipts)),
  client.on("ratelimited", (r) => console.log(r.id, r.kind, r.room, r.retryAfter)),
  client.on("frame", (f: ServerFrame) => {
    // Narrowing by `type` gives each frame's payload.
    switch (f.type) {
      case "system": console.log(f.payload.session, f.payload.heartbeat, f.payload.user.name); break;
      case "auth": console.log(f.payload.ok, f.payload.user.guest); break;
      case "pong": console.log(f.payload); break;
      case "ack": console.log(f.payload.seq); break;
      case "error": { const e: ErrorPayload = f.payload; console.log(e.code, e.retry_after, e.until); break; }
      case "chat": console.log(f.payload.room, f.payload.seq, f.payload.reply_to, f.payload.quote?.from); break;
      case "direct": console.log(f.payload.to, f.payload.mentions); break;
      case "file": console.log(f.payload.name, f.payload.size, f.payload.url); break;
      case "edit": console.log(f.payload.edited_at, f.payload.message); break;
      case "delete": console.log(f.payload.by); break;
      case "reaction": console.log(f.payload.emoji, f.payload.added); break;
      case "mention": console.log(f.payload.room, f.payload.message_id); break;
      case "joined": console.log(f.payload.member_count, f.payload.unread); break;
      case "left": console.log(f.payload.room); break;
      case "removed": console.log(f.payload.by); break;
      case "room": console.log(f.payload.private, f.payload.title); break;
      case "presence": console.log(f.payload.room); break;
      case "typing": console.log(f.payload.user); break;
      case "history": console.log(f.payload.messages[0]?.seq, f.payload.has_more, f.payload.read_counts); break;
      case "direct_history": console.log(f.payload.last_seq, f.payload.messages.length); break;
      case "read": console.log(f.payload.unread); break;
      case "receipt": console.log(f.payload.user); break;
      case "unread": console.log(f.payload.rooms[0]?.last_at, f.payload.direct.conversations.length); break;
      case "search": console.log(f.payload.results[0]?.highlights, f.payload.cursor); break;
      case "echo": console.log(f.payload); break;
      default: { const never: never = f; console.log(never); }
    }
  }),
];

// @ts-expect-error: no such event
client.on("no-such-event", () => {});
// @ts-expect-error: a message is a RoomItem, not a number
client.on("message", (m: number) => m);

async function everything(): Promise<void> {
  client.start();
  const state: ChatClientEvents["state"]["state"] = client.state;
  console.log(state, client.retryAt, client.closedReason, client.user?.name, client.transport,
    client.transportOption, client.httpUntil, client.closeCode, client.closeReason, client.authRefused,
    client.queued, client.rooms, client.lastSeq(LOBBY), client.url, client.token, client.guest, client.backoff.attempt);
  const sent = client.sendChat(LOBBY, "hi", { local: 1 }, { replyTo: null });
  const ack = await sent.promise;
  console.log(sent.id, ack.type, ack.payload.seq);
  await client.edit("id", "new").promise;
  await client.delete("id").promise;
  await client.react("id", "👍").promise;
  await client.unreact("id", ":thumbsup:").promise;
  await client.sendDirect("bob", "hey").promise;
  await client.sendFile({ room: LOBBY }, "a.txt", "text/plain", new Uint8Array([1, 2]).buffer).promise;
  await client.sendFile({ to: "bob" }, "b.bin", "", new Uint8Array([3])).promise;
  const raw = client.send<"presence">("presence", { room: LOBBY });
  console.log((await raw.promise).payload);
  const joined = await client.join("dev");
  console.log(joined.payload.seq);
  const left = await client.leave("dev");
  console.log(left.payload.room);
  const page = await client.history(LOBBY, null, 50, { thread: null, around: 3 });
  console.log(page.messages[0]?.text, page.hasMore, page.hasNewer, page.receipts.get("ann"), page.readCounts.get(1));
  const direct = await client.directHistory({ before: 10, limit: 20, around: null });
  console.log(direct.messages[0]?.to, direct.lastSeq, direct.receipts);
  const read = await client.markRead({ room: LOBBY }, 3).promise;
  console.log(read.payload.unread);
  client.markRead({ with: "bob" }, 4);
  const unread = await client.unread();
  console.log(unread.direct.unread);
  const found = await client.search("deplo*", { room: LOBBY, direct: false, with: null, from: "ann", after: null,
    before: null, order: "relevance", limit: 10, cursor: null });
  console.log(found.results[0]?.snippet, found.cursor);
  console.log(await client.presence(LOBBY));
  client.typing(LOBBY);
  client.setToken("t");
  client.reconnectNow();
  try {
    await client.sendChat(LOBBY, "x").promise;
  } catch (err) {
    if (err instanceof SendError) console.log(err.code, err.serverMessage, err.details);
  }
  client.close("bye");
  for (const stop of stops) stop();
}

const stream = new SeqStream<string>(1);
console.log(stream.offer(2, "b"), stream.offer(1, "a"), stream.startAt(1), stream.ready(), stream.skipTo(5), stream.expected);
const events = new EventStream("http://127.0.0.1:8765/events", { token: null, fetch: null, fallback: false });
events.onmessage = (e) => console.log(e.data.length, events.stream, events.heartbeat, events.readyState);
events.send("{}");
events.close();
const Ctor: WebSocketConstructor = await loadWebSocket();
console.log(Ctor, newId(), fileFrame({ room: LOBBY, name: "x", mime: "text/plain" }, new Uint8Array([1])).byteLength);
console.log(searchResult({ room: LOBBY, seq: 1, message_id: "m", from: "a", at: "t", message: "x", snippet: "x", highlights: [[0, 1]] }).highlights);
console.log(roomItem("chat", { room: LOBBY, message: "x", seq: 1 }).kind, directItem("direct", { to: "b" }).to);
console.log(changeItem("edit", { message: "y" }).text, mentionItem({ room: LOBBY, message_id: "m", from: "a", seq: 1 }).mentionIn);
void everything;
