"""The metrics registry: counters bound once, hub gauges read at scrape time."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from roomcast.hub import Hub
from roomcast.metrics import CLOSE_CODE_LABELS, Metrics
from roomcast.protocol.session import Session
from tests.fakes import FakePeer


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.exposition().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_hub_gauges_are_read_when_scraped() -> None:
    """Connections by state, rooms and memberships reflect the hub at scrape time."""
    hub = Hub()
    metrics = Metrics()
    metrics.watch(hub)
    guest, user = FakePeer.named("g"), FakePeer.named("u", guest=False)
    anonymous = FakePeer(Session("s-anon", None))
    for peer in (guest, user, anonymous):
        hub.add(peer)
    hub.join("lobby", guest)
    hub.join("lobby", user)
    hub.join("dev", user)
    got = samples(metrics)
    assert got[("roomcast_connections", (("state", "guest"),))] == 1
    assert got[("roomcast_connections", (("state", "user"),))] == 1
    assert got[("roomcast_connections", (("state", "unauthenticated"),))] == 1
    assert got[("roomcast_rooms", ())] == 2
    assert got[("roomcast_room_members", ())] == 3
    assert got[("roomcast_largest_room_members", ())] == 2
    hub.remove(user, ["lobby", "dev"])
    assert samples(metrics)[("roomcast_largest_room_members", ())] == 1


def test_counters_and_errors() -> None:
    """frame_in and error count by label; a rate_limited error also counts as rate limited."""
    metrics = Metrics()
    metrics.frame_in("chat")
    metrics.frame_in("chat")
    metrics.error("rate_limited")
    metrics.error("invalid_json")
    metrics.observe_batch(7, 0.002)
    got = samples(metrics)
    assert got[("roomcast_frames_received_total", (("type", "chat"),))] == 2
    assert got[("roomcast_errors_total", (("code", "rate_limited"),))] == 1
    assert got[("roomcast_rate_limited_total", ())] == 1
    assert got[("roomcast_store_batch_size_sum", ())] == 7


def test_two_servers_do_not_share_counters() -> None:
    """Each Metrics has its own registry."""
    one, two = Metrics(), Metrics()
    one.frame_in("chat")
    assert ("roomcast_frames_received_total", (("type", "chat"),)) not in samples(two)


def test_close_codes_are_a_fixed_set_of_labels() -> None:
    """Known close codes count under their own label, any other under other; no new series."""
    metrics = Metrics()
    series = set(samples(metrics))
    closes = {key for key in series if key[0] == "roomcast_connections_closed_total"}
    assert {dict(labels)["code"] for _, labels in closes} == CLOSE_CODE_LABELS | {"other"}
    assert CLOSE_CODE_LABELS == {
        "1000", "1001", "1002", "1003", "1006", "1007", "1008", "1009", "1011", "1013",
    }  # fmt: skip
    for code in (1000, 1006, 1013, 4321, 3999, 1005, 0, 65535, 1000):
        metrics.closed(code)
    got = samples(metrics)
    assert set(got) == series
    assert got[("roomcast_connections_closed_total", (("code", "1000"),))] == 2
    assert got[("roomcast_connections_closed_total", (("code", "1013"),))] == 1
    assert got[("roomcast_connections_closed_total", (("code", "other"),))] == 5
