"""GET /metrics over HTTP: Prometheus text that moves with what the server does."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from tests.integration.serverproc import ServerFactory, ServerProcess
from tests.integration.wsclient import RECV_TIMEOUT, recv_type, send_json, welcome

CLOSED = "roomcast_connections_closed_total"


async def scrape(server: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics by (name, sorted labels)."""
    async with aiohttp.ClientSession() as http:
        async with http.get(server.http_url("/metrics")) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            text = await resp.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_counters_move_with_traffic(server_factory: ServerFactory) -> None:
    """Chats, errors, refusals, acks, stored batches and connections all show in /metrics."""
    server = server_factory("--rate-limit", "1", "--rate-burst", "3")
    before = await scrape(server)
    assert value(before, "roomcast_connections", state="guest") == 0
    async with connect(server.ws_url()) as a, connect(server.ws_url()) as b:
        await welcome(a)
        await welcome(b)
        during = await scrape(server)
        assert value(during, "roomcast_connections", state="guest") == 2
        assert value(during, "roomcast_rooms") == 1
        assert value(during, "roomcast_room_members") == 2
        await send_json(a, "chat", {"message": "counted"}, id="c1")
        await recv_type(a, "ack")
        await a.send("not json")
        await recv_type(a, "error")
        for i in range(4):  # "not json" used a token too: the last ones are refused
            await send_json(a, "chat", {"message": f"flood {i}"}, id=f"f{i}")
        refused = await recv_type(a, "error")
        assert refused["payload"]["code"] == "rate_limited", json.dumps(refused)
    after = await scrape(server)
    assert value(after, "roomcast_frames_received_total", type="chat") >= 2
    assert value(after, "roomcast_frames_received_total", type="refused") >= 2
    assert value(after, "roomcast_messages_sent_total", type="chat") >= 1
    assert value(after, "roomcast_deliveries_total") >= 2  # one chat, two members
    assert value(after, "roomcast_errors_total", code="invalid_json") == 1
    assert value(after, "roomcast_errors_total", code="rate_limited") >= 1
    assert value(after, "roomcast_rate_limited_total") >= 1
    assert value(after, "roomcast_ack_seconds_count") >= 1
    assert value(after, "roomcast_store_batch_size_count") >= 1
    assert value(after, "roomcast_store_write_seconds_sum") > 0
    assert value(after, "roomcast_broker_publish_seconds_count") >= 1
    assert value(after, "roomcast_connections_closed_total", code="1000") == 2
    assert value(after, "roomcast_connections", state="guest") == 0


def closes(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
    """Connections ended, whatever their close code."""
    return sum(count for (name, _), count in samples.items() if name == CLOSED)


async def test_client_close_codes_add_no_series(server: ServerProcess) -> None:
    """Closing with codes 4321 and 3999 counts them as other; /metrics gains no series."""
    before = await scrape(server)
    for code in (4321, 3999):
        async with connect(server.ws_url()) as ws:
            await welcome(ws)
            await ws.close(code, "mine")
    async with asyncio.timeout(RECV_TIMEOUT):  # the server counts a close once TCP is gone
        while closes(after := await scrape(server)) < closes(before) + 2:
            await asyncio.sleep(0.02)
    assert value(after, CLOSED, code="other") == 2
    assert set(after) == set(before), set(after) ^ set(before)
    codes = {dict(labels)["code"] for name, labels in after if name == CLOSED}
    assert "4321" not in codes and "3999" not in codes
