// Over WebSocket: nothing lost, nothing repeated, in order, through a hundred
// cuts and a server restart.

import assert from "node:assert/strict";
import { test } from "node:test";

import { chatAndResume } from "./scenario.js";

test("a hundred cuts while sending, then a restart: every room and direct message once, in order", async () => {
  const { transports, proxy } = await chatAndResume({ cuts: 100, transport: "websocket" });
  assert.deepEqual([...transports], ["websocket"]);
  assert.ok(proxy.cuts >= 100);
});
