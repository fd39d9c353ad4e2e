// Real parts for the Node tests: the real `roomcast serve` on port 0, and a
// real TCP proxy in front of it that a test can cut, point at a restarted
// server, or have refuse WebSocket upgrades (as some proxies do).

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { Backoff, ChatClient } from "roomcast";

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
/** The Python with roomcast installed: pytest passes its own; else the repo's .venv. */
const PYTHON = process.env.ROOMCAST_PYTHON ?? join(REPO, ".venv/bin/python");
/** How long a server gets to print its listening line (ms). */
const START_TIMEOUT = 20000;
/** How long a test waits for something that should happen (ms). */
export const WAIT = 15000;
/** Passwords are hashed with OWASP's minimum here: sign-ups stay cheap. */
const PASSWORD = "correct horse battery";

/** A fresh data directory, removed with `cleanup()`. */
export function dataDir() {
  const dir = mkdtempSync(join(tmpdir(), "roomcast-js-"));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/**
 * `roomcast serve --port 0` on `dir`, resolved once it prints its listening
 * line: {port, url, stop()}. Rate limits off: the tests resend bursts on
 * purpose, and a refusal would only slow them (its retry is tested elsewhere).
 */
export function startServer(dir, ...args) {
  const proc = spawn(PYTHON, ["-m", "roomcast", "serve", "--port", "0", "--data-dir", dir,
    "--rate-limit", "0", "--max-connections-per-user", "0", ...args], {
    env: { ...process.env, ROOMCAST_PASSWORD_HASH: "small" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  proc.stderr.on("data", (chunk) => { stderr += chunk; });
  const exited = new Promise((done) => proc.once("exit", (code, signal) => done(code ?? signal)));
  return new Promise((ready, fail) => {
    let out = "";
    const timer = setTimeout(() => {
      proc.kill("SIGKILL");
      fail(new Error(`the server did not start: ${out} ${stderr}`));
    }, START_TIMEOUT);
    proc.stdout.on("data", (chunk) => {
      out += chunk;
      const match = /roomcast listening on (http:\/\/127\.0\.0\.1:(\d+))/.exec(out);
      if (!match) return;
      clearTimeout(timer);
      proc.stdout.removeAllListeners("data");
      proc.stdout.resume();
      ready({
        port: Number(match[2]),
        url: match[1],
        stderr: () => stderr,
        /** SIGTERM (a clean shutdown), and the exit status. */
        async stop() {
          if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGTERM");
          const killer = setTimeout(() => proc.kill("SIGKILL"), 15000);
          const status = await exited;
          clearTimeout(killer);
          return status;
        },
      });
    });
    proc.once("exit", (code) => {
      clearTimeout(timer);
      fail(new Error(`the server exited with ${code}: ${stderr}`));
    });
  });
}

/**
 * A TCP proxy on 127.0.0.1: each connection piped to `target` (which a test
 * may change: a restarted server). `cut()` resets every piped connection, as
 * a network fault does; `refusing` resets new ones (a server that is down);
 * `blockWebSocket` answers a request that asks for a WebSocket upgrade with
 * 403, as a proxy that refuses WebSocket does, and pipes any other request.
 */
export class Proxy {
  constructor(target, { blockWebSocket = false } = {}) {
    this.target = target;
    this.blockWebSocket = blockWebSocket;
    this.refusing = false;
    /** Upgrades refused (blockWebSocket). */
    this.refused = 0;
    this.cuts = 0;
    this.sockets = new Set();
    this.server = net.createServer((client) => this._accept(client));
  }

  listen() {
    return new Promise((done) => this.server.listen(0, "127.0.0.1", () => {
      this.port = this.server.address().port;
      done(this);
    }));
  }

  _track(socket) {
    this.sockets.add(socket);
    socket.on("error", () => {});
    socket.on("close", () => this.sockets.delete(socket));
  }

  _accept(client) {
    this._track(client);
    if (this.refusing) {
      client.resetAndDestroy();
      return;
    }
    if (!this.blockWebSocket) {
      this._pipe(client, Buffer.alloc(0));
      return;
    }
    // Read the first request's head: an upgrade is refused, anything else piped on.
    let head = Buffer.alloc(0);
    const onData = (chunk) => {
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf("\r\n\r\n");
      if (end < 0) return;
      client.off("data", onData);
      client.pause();
      if (/^upgrade[ \t]*:[ \t]*websocket/im.test(head.subarray(0, end).toString("latin1"))) {
        this.refused += 1;
        const body = '{"error":"WebSocket is blocked by this network\'s policy"}';
        client.end(`HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`);
        return;
      }
      this._pipe(client, head);
    };
    client.on("data", onData);
  }

  _pipe(client, head) {
    const upstream = net.connect(this.target, "127.0.0.1");
    this._track(upstream);
    upstream.on("error", () => client.resetAndDestroy());
    client.on("error", () => upstream.resetAndDestroy());
    upstream.on("connect", () => {
      if (head.length) upstream.write(head);
      client.pipe(upstream);
      upstream.pipe(client);
      client.resume();
    });
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
  }

  /** Reset every connection (both sides), as a dead link does. */
  cut() {
    this.cuts += 1;
    for (const socket of [...this.sockets]) socket.resetAndDestroy();
  }

  close() {
    this.cut();
    return new Promise((done) => this.server.close(() => done()));
  }
}

/** POST a JSON body to the server; the answer's status and JSON. */
async function post(url, path, body) {
  const response = await fetch(`${url}${path}`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  return { status: response.status, body: await response.json().catch(() => null) };
}

/** Register `name` and log it in: its token. */
export async function signUp(url, name) {
  const registered = await post(url, "/api/register", { username: name, password: PASSWORD });
  if (registered.status !== 201) throw new Error(`register ${name}: ${JSON.stringify(registered)}`);
  const login = await post(url, "/api/login", { username: name, password: PASSWORD });
  if (login.status !== 200) throw new Error(`login ${name}: ${JSON.stringify(login)}`);
  return String(login.body.token);
}

/** A client of the proxy's port with short waits (the tests cut often). */
export function client(proxy, options = {}) {
  return new ChatClient({
    url: `ws://127.0.0.1:${proxy.port}/ws`,
    backoff: new Backoff({ first: 20, cap: 200 }),
    openTimeout: 3000,
    ...options,
  });
}

/** Resolves when `check()` is true (checked every 20 ms), or fails after `ms`. */
export function until(check, what, ms = WAIT) {
  return new Promise((done, fail) => {
    const started = Date.now();
    const poll = () => {
      if (check()) done();
      else if (Date.now() - started > ms) fail(new Error(`timed out waiting for ${what}`));
      else setTimeout(poll, 20);
    };
    poll();
  });
}

/** Resolves with the state event when `client` reaches `state`. */
export function reached(chat, state, ms = WAIT) {
  if (chat.state === state) return Promise.resolve(null);
  return new Promise((done, fail) => {
    const timer = setTimeout(() => fail(new Error(`not ${state} in ${ms} ms (${chat.state})`)), ms);
    const stop = chat.on("state", (event) => {
      if (event.state !== state) return;
      clearTimeout(timer);
      stop();
      done(event);
    });
  });
}

export const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
