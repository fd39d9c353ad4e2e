// Backoff (full jitter) and the connection's state events, against the real
// server behind a proxy that refuses, then accepts, then cuts.

import assert from "node:assert/strict";
import { test } from "node:test";

import { Backoff } from "roomcast";

import { Proxy, client, dataDir, reached, startServer, until } from "./helpers.js";

test("backoff: a uniform wait below a ceiling that doubles to the cap, reset by a stable connection", () => {
  const top = new Backoff({ first: 500, cap: 30000, random: () => 1 });
  assert.deepEqual(Array.from({ length: 9 }, () => top.next()), [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
  top.connectedFor(59999);
  assert.equal(top.next(), 30000, "a short connection does not reset it");
  top.connectedFor(60000);
  assert.equal(top.next(), 500, "a stable one does");
  const half = new Backoff({ first: 100, random: () => 0.5 });
  assert.deepEqual([half.next(), half.next(), half.next()], [50, 100, 200]);
  const jitter = new Backoff({ first: 1000 });
  for (let i = 0; i < 200; i += 1) {
    const delay = jitter.next();
    assert.ok(delay >= 0 && delay <= Math.min(30000, 1000 * 2 ** i), `attempt ${i}: ${delay}`);
  }
});

test("states: connecting with backoff while the server is unreachable, connected, reconnecting after a cut, closed", async () => {
  const data = dataDir();
  const server = await startServer(data.dir);
  const proxy = await new Proxy(server.port).listen();
  proxy.refusing = true;
  const chat = client(proxy, { guest: "carol", transport: "websocket", backoff: new Backoff({ first: 40, cap: 160, random: () => 1 }) });
  const events = [];
  chat.on("state", (s) => events.push({ ...s, at: Date.now() }));
  try {
    assert.equal(chat.state, "idle");
    chat.start();
    await until(() => events.filter((e) => e.retryAt !== null).length >= 5, "five waits");
    const waits = events.filter((e) => e.retryAt !== null).slice(0, 5);
    waits.forEach((e, i) => {
      assert.equal(e.state, "connecting", "never connected yet");
      assert.match(e.reason, /closed with 1006|cannot connect/);
      const delay = e.retryAt - e.at;
      const ceiling = Math.min(160, 40 * 2 ** i);
      assert.ok(delay > ceiling - 15 && delay <= ceiling, `wait ${i}: ${delay} ms, ceiling ${ceiling}`);
    });
    // Each wait is kept: the next attempt starts no earlier than its retryAt.
    const tries = events.filter((e) => e.retryAt === null && e.at > waits[0].at);
    assert.ok(tries[0].at >= waits[0].retryAt - 2, "the attempt waited");

    proxy.refusing = false;
    await reached(chat, "connected");
    const connected = events.at(-1);
    assert.deepEqual([connected.state, connected.transport, connected.retryAt], ["connected", "websocket", null]);
    assert.equal(chat.user.name, "carol");

    const before = events.length;
    proxy.cut();
    await reached(chat, "reconnecting");
    await reached(chat, "connected");
    const after = events.slice(before).map((e) => e.state);
    assert.equal(after[0], "reconnecting", `after a cut: ${after}`);
    assert.equal(after.at(-1), "connected");
    assert.ok(after.every((s) => s === "reconnecting" || s === "connected"), `${after}`);
    assert.equal(chat.user.name, "carol", "the same nickname after the reconnect");

    chat.close("done");
    assert.deepEqual([chat.state, chat.closedReason], ["closed", "done"]);
    assert.equal(events.at(-1).state, "closed");
    assert.throws(() => chat.sendChat("lobby", "late"), /closed/);
  } finally {
    chat.close();
    await proxy.close();
    await server.stop();
    data.cleanup();
  }
});
