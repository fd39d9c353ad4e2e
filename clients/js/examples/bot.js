#!/usr/bin/env node
// A roomcast bot: signs in, joins one room and answers commands there.
//
//   !echo TEXT   answers TEXT
//   !time        answers the time (UTC, ISO 8601)
//   !help        lists the commands
//
// Answers are replies (in the command's thread). The bot ignores its own
// messages, so an answer that looks like a command starts nothing. The
// client keeps the connection up (reconnects with backoff, resumes the room
// with `since`), so a command sent while the connection was down is answered
// once it is back, exactly once.
//
// Settings, from the environment:
//   BOT_SERVER     the server's base URL (default http://127.0.0.1:8765)
//   BOT_ROOM       the room to serve (default "bots"; made public if new)
//   BOT_TRANSPORT  "auto" (default), "websocket" or "http"
// and one way to sign in:
//   BOT_NAME + BOT_PASSWORD   log in; register the name first if it is free
//   BOT_TOKEN                 an access token (with BOT_REFRESH_TOKEN it renews)
//   BOT_GUEST                 a guest nickname
//   (none)                    a guest with the name the server gives
//
// Run from clients/js (after `npm ci`): BOT_ROOM=dev node examples/bot.js
// It prints "ready NAME ROOM TRANSPORT" on stdout once it serves the room;
// everything else goes to stderr. SIGINT or SIGTERM stops it (status 0); a
// refused sign-in or a close for good (1008: banned, signed out) is status 1.

import { Backoff, ChatClient, SendError } from "roomcast";

const SERVER = process.env.BOT_SERVER || "http://127.0.0.1:8765";
const ROOM = process.env.BOT_ROOM || "bots";
const TRANSPORT = process.env.BOT_TRANSPORT || "auto";
const NAME = process.env.BOT_NAME || null;
const PASSWORD = process.env.BOT_PASSWORD || null;
/** HTTP statuses worth another sign-in attempt (too many, server busy); others are final. */
const RETRY_STATUSES = new Set([429, 502, 503, 504]);
/** The longest the bot waits for its connection to close on a signal before it exits anyway. */
const STOP_MS = 2000;

function log(text) {
  console.error(`${new Date().toISOString()} bot: ${text}`);
}

/** A JSON POST to the server's HTTP API; rejects with `status` and `code` on an error answer. */
async function post(path, body) {
  const response = await fetch(new URL(path, SERVER), {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const error = new Error(data?.error?.message ?? `HTTP ${response.status}`);
    Object.assign(error, {
      status: response.status,
      code: data?.error?.code ?? "http",
      retryAfter: Number(response.headers.get("Retry-After") ?? 0) * 1000,
    });
    throw error;
  }
  return data;
}

/**
 * `attempt()`, tried again while the server is unreachable or busy, with the
 * client's own backoff (full jitter); an answer that will not change (a wrong
 * password, a bad name) is thrown at once.
 */
async function persist(what, attempt) {
  const backoff = new Backoff();
  for (;;) {
    try {
      return await attempt();
    } catch (err) {
      if (err.status !== undefined && !RETRY_STATUSES.has(err.status)) throw err;
      const wait = Math.max(err.retryAfter ?? 0, backoff.next());
      log(`${what} failed (${err.message}); trying again in ${Math.round(wait)} ms`);
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
  }
}

/** {token, refresh_token, ...}: a login, after registering NAME when nobody has it yet. */
async function logIn() {
  try {
    return await post("/api/login", { username: NAME, password: PASSWORD });
  } catch (err) {
    if (err.status !== 401) throw err;
  }
  try {
    await post("/api/register", { username: NAME, password: PASSWORD });
    log(`registered ${NAME}`);
  } catch (err) {
    // Taken: the name is someone's, and the password is not theirs.
    if (err.code === "name_taken") throw new Error(`${NAME} is registered with another password`);
    throw err;
  }
  return post("/api/login", { username: NAME, password: PASSWORD });
}

/** The refresh token held now (each works once: every renewal brings the next). */
let refreshToken = process.env.BOT_REFRESH_TOKEN || null;
/** The renewal under way, shared by every caller (a refresh token used twice ends the session). */
let renewing = null;

/**
 * A new access token, or null when there is none to have (the client then
 * stops for good: sign in again). The refresh token first; refused, the
 * password, if the bot has one. Both are tried again while the server is
 * unreachable or busy, as the client reconnects.
 */
async function renewOnce() {
  if (refreshToken !== null) {
    try {
      const refresh = () => post("/api/refresh", { refresh_token: refreshToken });
      const session = await persist("renewing the token", refresh);
      refreshToken = session.refresh_token;
      log("renewed the token");
      return session.token;
    } catch (err) {
      if (err.status !== 401) throw err;
      refreshToken = null; // used, revoked or expired: the session is over
    }
  }
  if (NAME === null || PASSWORD === null) return null;
  const session = await persist("signing in again", logIn);
  refreshToken = session.refresh_token;
  log("signed in again");
  return session.token;
}

/** renewOnce(), one at a time: every caller while one runs gets its answer. */
function renew() {
  renewing ??= renewOnce()
    .catch((err) => {
      log(`renewing the token failed: ${err.message}`);
      return null;
    })
    .finally(() => {
      renewing = null;
    });
  return renewing;
}

/** What the bot answers to `text`, or null for anything that is not its command. */
function answer(text) {
  const [command, ...rest] = text.trim().split(/\s+/);
  const args = text.trim().slice(command.length).trim();
  switch (command) {
    case "!echo":
      return rest.length ? args : "usage: !echo TEXT";
    case "!time":
      return new Date().toISOString();
    case "!help":
      return "commands: !echo TEXT, !time, !help";
    default:
      return null;
  }
}

async function main() {
  let token = process.env.BOT_TOKEN || null;
  if (token === null && NAME !== null && PASSWORD !== null) {
    const session = await persist("signing in", logIn);
    token = session.token;
    refreshToken = session.refresh_token;
  }
  const guest = token === null ? process.env.BOT_GUEST || null : null;
  const url = new URL("/ws", SERVER);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  const client = new ChatClient({
    url: url.href,
    token,
    guest,
    transport: TRANSPORT,
    refreshToken: token !== null ? renew : null,
  });

  /** The first join, once connected; null before. */
  let joining = null;
  /** Closing on a signal (status 0), not stopped by the server (status 1). */
  let stopping = false;
  client.on("state", ({ state, reason, transport }) => {
    const over = state === "connected" ? ` over ${transport}` : "";
    log(`${state}${over}${reason ? `: ${reason}` : ""}`);
    if (state === "connected" && joining === null) {
      // Once: after a reconnect the client joins the room again by itself, with `since`.
      joining = client.join(ROOM).then(
        () => console.log(`ready ${client.user?.name ?? ""} ${ROOM} ${client.transport}`),
        (err) => {
          log(`cannot join ${ROOM}: ${err.message}`);
          client.close(`cannot join ${ROOM}`);
        },
      );
    }
    if (state === "closed") {
      if (!stopping) process.exitCode = 1;
      log(`stopped: ${client.closedReason}`);
    }
  });
  client.on("message", (item) => {
    if (item.room !== ROOM || item.kind !== "chat" || item.deleted) return;
    if (item.from === client.user?.name) return; // its own, answers included
    const reply = answer(item.text);
    if (reply === null) return;
    client.sendChat(ROOM, reply, {}, { replyTo: item.messageId }).promise.catch((err) => {
      log(`answering ${item.from} failed: ${err instanceof SendError ? err.code : err.message}`);
    });
  });
  client.on("removed", ({ room, reason }) => {
    if (room === ROOM) client.close(`removed from ${room}${reason ? `: ${reason}` : ""}`);
  });
  client.on("servererror", ({ code, message }) => log(`server: ${code}: ${message}`));

  const stop = (signal) => {
    stopping = true;
    log(`${signal}: stopping`);
    client.close("bot stopped");
    setTimeout(() => process.exit(0), STOP_MS).unref();
  };
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
  client.start();
}

main().catch((err) => {
  log(err.message);
  process.exitCode = 1;
});
