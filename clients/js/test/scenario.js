// The chat-and-resume check both transports must pass: two users chat in a
// room and directly while every connection is cut again and again, then the
// server restarts on its data; each sees every message once, in order.

import assert from "node:assert/strict";

import { Proxy, client, dataDir, reached, signUp, sleep, startServer, until } from "./helpers.js";

/** What a delivered room or direct item shows: its text, or the file's name. */
const shown = (item) => (item.kind === "file" ? `file:${item.file?.name}` : item.text);

/** Seqs that count up by one from the first (no gap, no repeat). */
function assertConsecutive(items, what) {
  const seqs = items.map((m) => m.seq);
  for (let i = 1; i < seqs.length; i += 1) assert.equal(seqs[i], seqs[i - 1] + 1, `${what}: seqs ${seqs.join(",")}`);
}

/**
 * Run the check. `cuts`: how often every connection is reset while messages
 * go out; `transport`: the clients' option; `blockWebSocket`: the proxy
 * refuses upgrades (the clients must fall back). Returns the two clients'
 * transports and the proxy, for the caller's own checks.
 */
export async function chatAndResume({ cuts, transport, blockWebSocket = false, messages = 120 }) {
  const data = dataDir();
  let server = await startServer(data.dir);
  const proxy = await new Proxy(server.port, { blockWebSocket }).listen();
  const clients = [];
  try {
    const [annToken, bobToken] = await Promise.all([signUp(server.url, "ann"), signUp(server.url, "bob")]);
    const ann = client(proxy, { token: annToken, transport });
    const bob = client(proxy, { token: bobToken, transport });
    clients.push(ann, bob);
    const got = { bobRoom: [], annRoom: [], bobDirect: [], annDirect: [] };
    ann.on("message", (m) => m.room === "dev" && got.annRoom.push(m));
    bob.on("message", (m) => m.room === "dev" && got.bobRoom.push(m));
    ann.on("direct", (m) => got.annDirect.push(m));
    bob.on("direct", (m) => got.bobDirect.push(m));
    const transports = new Set();
    for (const c of clients) c.on("state", (s) => s.state === "connected" && transports.add(s.transport));
    ann.start();
    bob.start();
    await Promise.all([reached(ann, "connected"), reached(bob, "connected")]);
    await ann.join("dev");
    await bob.join("dev");

    const sent = { room: [], direct: [] };
    const acks = [];
    const send = (i, phase) => {
      const text = `${phase}-${i}`;
      sent.room.push(text);
      acks.push(ann.sendChat("dev", text).promise);
      if (i % 2 === 0) {
        sent.direct.push(`dm-${text}`);
        acks.push(ann.sendDirect("bob", `dm-${text}`).promise);
      }
    };
    // Cut every connection `cuts` times while the messages go out.
    const cutter = (async () => {
      for (let i = 0; i < cuts; i += 1) {
        await sleep(10 + Math.random() * 40);
        proxy.cut();
      }
    })();
    for (let i = 0; i < messages; i += 1) {
      send(i, "cut");
      if (i === messages / 2) {
        sent.room.push("file:notes.txt");
        acks.push(ann.sendFile({ room: "dev" }, "notes.txt", "text/plain", new TextEncoder().encode("notes").buffer).promise);
      }
      await sleep(Math.random() * 30);
    }
    await cutter;
    await Promise.all(acks.splice(0));

    // A restart on the same data, on another port behind the same proxy port.
    assert.equal(await server.stop(), 0, "the server stops cleanly on SIGTERM");
    for (let i = 0; i < 10; i += 1) send(i, "down"); // queued while it is down
    server = await startServer(data.dir);
    proxy.target = server.port;
    for (let i = 0; i < 10; i += 1) send(i, "after");
    await Promise.all(acks);

    const complete = () => got.bobRoom.length >= sent.room.length && got.annRoom.length >= sent.room.length
      && got.bobDirect.length >= sent.direct.length && got.annDirect.length >= sent.direct.length;
    await until(complete, "every message to arrive");
    await sleep(300); // a repeat would come now
    assert.deepEqual(got.bobRoom.map(shown), sent.room, "bob: the room, once each, in order");
    assert.deepEqual(got.annRoom.map(shown), sent.room, "ann: the room, once each, in order");
    assert.deepEqual(got.bobDirect.map(shown), sent.direct, "bob: the direct messages, once each, in order");
    assert.deepEqual(got.annDirect.map(shown), sent.direct, "ann: her direct copies, once each, in order");
    assertConsecutive(got.bobRoom, "room");
    assertConsecutive(got.bobDirect, "bob's direct stream");
    // The server stored each once: its history is the same list.
    const stored = [];
    for (let before = null; ;) {
      const page = await bob.history("dev", before, 100);
      stored.unshift(...page.messages);
      if (!page.hasMore || !page.messages.length) break;
      before = page.messages[0].seq;
    }
    assert.deepEqual(stored.map(shown), sent.room, "the room's history");
    return { transports, proxy, ann, bob };
  } finally {
    for (const c of clients) c.close();
    await proxy.close();
    await server.stop();
    data.cleanup();
  }
}
