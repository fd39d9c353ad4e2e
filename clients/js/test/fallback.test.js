// The HTTP fallback (GET /events, POST /events/{stream}): behind a proxy that
// refuses WebSocket the client falls back, and passes the same check.

import assert from "node:assert/strict";
import { test } from "node:test";

import { Proxy, client, dataDir, reached, sleep, startServer, until } from "./helpers.js";
import { chatAndResume } from "./scenario.js";

test("behind a proxy that refuses WebSocket: falls back to HTTP, cuts and a restart lose and repeat nothing", async () => {
  const { transports, proxy, ann, bob } = await chatAndResume({ cuts: 40, transport: "auto", blockWebSocket: true, messages: 80 });
  assert.deepEqual([...transports], ["http"]);
  assert.equal(ann.transport, "http");
  // One refused upgrade each: after a fallback, reconnects go straight to HTTP (for 5 minutes).
  assert.equal(proxy.refused, 2);
  for (const c of [ann, bob]) assert.ok(c.httpUntil > Date.now() + 4 * 60 * 1000);
});

test("transport option: http never tries WebSocket; websocket never falls back", async () => {
  const data = dataDir();
  const server = await startServer(data.dir);
  const open = await new Proxy(server.port).listen();
  const blocking = await new Proxy(server.port, { blockWebSocket: true }).listen();
  const http = client(open, { guest: "dave", transport: "http" });
  const ws = client(blocking, { guest: "erin", transport: "websocket" });
  try {
    const states = [];
    http.on("state", (s) => states.push(s.transport));
    http.start();
    await reached(http, "connected");
    assert.equal(http.transport, "http");
    assert.ok(states.every((t) => t === "http"));
    assert.equal(http.httpUntil, 0, "no fallback happened");
    const { promise } = http.sendChat("lobby", "over http");
    assert.equal((await promise).type, "ack");

    ws.start();
    await sleep(1000);
    assert.equal(ws.state, "connecting");
    assert.equal(ws.transport, "websocket");
    assert.ok(blocking.refused >= 2, `${blocking.refused} upgrades refused`);
  } finally {
    http.close();
    ws.close();
    await open.close();
    await blocking.close();
    await server.stop();
    data.cleanup();
  }
});

test("auto with the server down: no fallback, connects over WebSocket once it is up", async () => {
  const data = dataDir();
  const server = await startServer(data.dir);
  const proxy = await new Proxy(server.port).listen();
  proxy.refusing = true;
  const chat = client(proxy, { guest: "fay" });
  try {
    let waits = 0;
    chat.on("state", (s) => {
      // Let it through while the client waits out its backoff (not between its two tries).
      if (s.retryAt !== null && ++waits === 5) proxy.refusing = false;
    });
    chat.start();
    await until(() => waits >= 5, "five refused attempts");
    assert.equal(chat.httpUntil, 0, "a refused connection is no reason to fall back");
    await reached(chat, "connected");
    assert.equal(chat.transport, "websocket");
  } finally {
    chat.close();
    await proxy.close();
    await server.stop();
    data.cleanup();
  }
});

test("over HTTP an idle client keeps its stream: it POSTs within each heartbeat", async () => {
  const data = dataDir();
  const server = await startServer(data.dir, "--heartbeat", "1");
  const proxy = await new Proxy(server.port).listen();
  // Its own pings are far apart: only the stream's keepalive answers the heartbeat.
  const chat = client(proxy, { guest: "gus", transport: "http", pingInterval: 60000 });
  const states = [];
  chat.on("state", (s) => states.push(s.state));
  try {
    chat.start();
    await reached(chat, "connected");
    await sleep(3500);
    assert.deepEqual(states, ["connecting", "connected"], "never dropped");
    assert.equal((await chat.sendChat("lobby", "still here").promise).type, "ack");
  } finally {
    chat.close();
    await proxy.close();
    await server.stop();
    data.cleanup();
  }
});
