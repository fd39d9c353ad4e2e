// Load-generator probe on Node's `ws` package, used only to choose the load
// generator: it measures the same single fan-out step as `bench/lib/loadgen` `rate`
// (N clients, one sender at a fixed deliveries/s, latency from the monotonic
// ns timestamp in the message text) and an echo window like its `echo`,
// and reports frames/s and its own CPU use. Bounded in count and time.
//
// usage: node loadgen_ws.js rate URL CLIENTS DELIVERIES_PER_S SECONDS
//        node loadgen_ws.js echo URL CLIENTS SECONDS
"use strict";
const WebSocket = require("ws");

const [mode, url, clientsArg, a, b] = process.argv.slice(2);
const N = Number(clientsArg);
const PAD = "x".repeat(48);
const now = () => process.hrtime.bigint();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
setTimeout(() => { console.error("timeout"); process.exit(2); }, 120000).unref();

function connect(onMessage) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false });
    ws.on("open", () => resolve(ws));
    ws.on("error", reject);
    ws.on("message", (data) => onMessage(ws, data));
  });
}

async function connectAll(onMessage) {
  const all = [];
  for (let i = 0; i < N; i += 50) {
    const batch = [];
    for (let j = i; j < Math.min(N, i + 50); j++) batch.push(connect(onMessage));
    all.push(...(await Promise.all(batch)));
  }
  return all;
}

function pct(sorted, q) {
  if (!sorted.length) return NaN;
  return Number(sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]) / 1e6;
}

function cpuSeconds() {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

async function rate(target, seconds) {
  let received = 0;
  let lat = [];
  const onMessage = (_ws, data) => {
    const s = data.toString();
    if (!s.includes('"type":"chat"')) return;
    const i = s.indexOf('"message":"') + 11;
    const j = s.indexOf("|", i);
    if (j < 0) return;
    lat.push(now() - BigInt(s.slice(i, j)));
    received++;
  };
  const clients = await connectAll(onMessage);
  const sender = clients[0];
  const chat = () => JSON.stringify({ type: "chat", payload: { message: `${now()}|${PAD}` } });
  for (let k = 0; k < 50 && received < N; k++) { received = 0; sender.send(chat()); await sleep(100); }
  await sleep(200);
  received = 0; lat = [];
  const perSec = target / N;
  const cap = Math.max(1, Math.floor(perSec / 100));
  const cpu0 = cpuSeconds();
  const t0 = Date.now();
  let sent = 0;
  while (Date.now() - t0 < seconds * 1000) {
    const due = Math.min(cap, Math.floor(((Date.now() - t0) / 1000) * perSec) + 1 - sent);
    for (let k = 0; k < due; k++) sender.send(chat());
    sent += Math.max(due, 0);
    await sleep(1);
  }
  const window = (Date.now() - t0) / 1000;
  const cpu = (cpuSeconds() - cpu0) / window;
  const deadline = Date.now() + 2000;
  while (received < sent * N && Date.now() < deadline) await sleep(10);
  lat.sort((x, y) => (x < y ? -1 : x > y ? 1 : 0));
  clients.forEach((c) => c.terminate());
  return {
    scenario: "rate", loadgen: "node-ws", clients: N, target_deliveries_per_s: target, sent,
    deliveries: received, delivered_per_s: Math.round(received / window), lost: sent * N - received,
    p50_ms: pct(lat, 0.5), p99_ms: pct(lat, 0.99), loadgen_cpu: Number(cpu.toFixed(3)),
  };
}

async function echo(seconds) {
  let running = true;
  let rtts = [];
  const state = new Map();
  const ping = (ws) => { state.set(ws, now()); ws.send('{"type":"ping","id":"1","payload":{}}'); };
  const clients = await connectAll((ws, data) => {
    if (!state.has(ws) || !data.toString().includes('"type":"pong"')) return;
    rtts.push(now() - state.get(ws));
    state.delete(ws);
    if (running) ping(ws);
  });
  await sleep(200);
  clients.forEach(ping);
  await sleep(1000);
  rtts = [];
  const cpu0 = cpuSeconds();
  const t0 = Date.now();
  await sleep(seconds * 1000);
  const window = (Date.now() - t0) / 1000;
  const cpu = (cpuSeconds() - cpu0) / window;
  const done = rtts.slice().sort((x, y) => (x < y ? -1 : x > y ? 1 : 0));
  running = false;
  clients.forEach((c) => c.terminate());
  return {
    scenario: "echo", loadgen: "node-ws", clients: N, round_trips: done.length,
    round_trips_per_s: Math.round(done.length / window), p50_ms: pct(done, 0.5),
    p99_ms: pct(done, 0.99), loadgen_cpu: Number(cpu.toFixed(3)),
  };
}

(async () => {
  const result = mode === "rate" ? await rate(Number(a), Number(b)) : await echo(Number(a));
  console.log(JSON.stringify(result));
  process.exit(0);
})().catch((e) => { console.error(e); process.exit(1); });
