#!/usr/bin/env node
// A client in the style of the original design: it connects to the root
// path, sends only original-style frames ({"type":"chat","payload":{"message"}}
// and {"type":"ping"}), and prints every frame it receives as one JSON line.
//
// usage: node client.js ws://127.0.0.1:PORT/ MESSAGE EXPECTED [SECONDS]
//
// It sends a ping and MESSAGE once the server's welcome arrives, and exits 0
// once it has seen its pong, its own chat and a chat saying EXPECTED from
// someone else. It gives up with exit 3 after SECONDS (default 10); a frame
// that is not a JSON object is exit 4.
"use strict";

const WebSocket = require("ws");

const [url, message, expected, seconds = "10"] = process.argv.slice(2);
if (!url || !message || !expected) {
  console.error("usage: node client.js URL MESSAGE EXPECTED [SECONDS]");
  process.exit(2);
}

const ws = new WebSocket(url);
const seen = { welcome: false, pong: false, own: false, other: false };
let me = null;

const deadline = setTimeout(() => {
  console.error(`timed out: ${JSON.stringify(seen)}`);
  ws.terminate();
  process.exit(3);
}, Number(seconds) * 1000);

function finish() {
  if (seen.pong && seen.own && seen.other) {
    clearTimeout(deadline);
    ws.close(1000, "done");
  }
}

ws.on("message", (data, isBinary) => {
  const text = data.toString("utf8");
  let frame;
  try {
    frame = JSON.parse(text);
  } catch (err) {
    console.error(`not JSON: ${text}`);
    process.exit(4);
  }
  if (isBinary || frame === null || typeof frame !== "object" || Array.isArray(frame)) {
    console.error(`not a JSON object frame: ${text}`);
    process.exit(4);
  }
  process.stdout.write(JSON.stringify(frame) + "\n");

  const payload = frame.payload || {};
  if (frame.type === "system" && !seen.welcome) {
    seen.welcome = true;
    me = payload.user && payload.user.name;
    ws.send(JSON.stringify({ type: "ping" }));
    ws.send(JSON.stringify({ type: "chat", payload: { message } }));
  } else if (frame.type === "pong") {
    seen.pong = true;
  } else if (frame.type === "chat") {
    if (payload.from === me && payload.message === message) seen.own = true;
    if (payload.from !== me && payload.message === expected) seen.other = true;
  }
  finish();
});

ws.on("close", (code) => {
  clearTimeout(deadline);
  process.exit(seen.pong && seen.own && seen.other ? 0 : 5);
});

ws.on("error", (err) => {
  console.error(`error: ${err.message}`);
  process.exit(6);
});
