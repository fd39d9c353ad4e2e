"""The wire form of publications between nodes: exact round trips, clear refusals."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from roomcast.broker.base import Publication, decode_publication, encode_publication
from roomcast.broker.redis import pack_batch, unpack_batch

names = st.text(min_size=1, max_size=40)
publications = st.builds(
    Publication,
    node_id=st.text(alphabet="0123456789abcdef", min_size=1, max_size=12),
    room=names,
    user=st.none(),
    frame=st.binary(max_size=300),
    skip_user=st.none() | names,
    seq=st.none() | st.integers(min_value=0, max_value=2**62),
) | st.builds(
    Publication,
    node_id=st.text(alphabet="0123456789abcdef", min_size=1, max_size=12),
    room=st.none(),
    user=names,
    frame=st.binary(max_size=300),
    skip_user=st.none(),
    seq=st.none() | st.integers(min_value=0, max_value=2**62),
)
orders = st.builds(
    Publication,
    node_id=st.text(alphabet="0123456789abcdef", min_size=1, max_size=12),
    room=st.none() | names,
    user=st.none(),
    frame=st.binary(max_size=300),
    order=st.just(True),
) | st.builds(
    Publication,
    node_id=st.text(alphabet="0123456789abcdef", min_size=1, max_size=12),
    room=st.none(),
    user=names,
    frame=st.binary(max_size=300),
    order=st.just(True),
)


@given(orders)
def test_order_round_trip(publication: Publication) -> None:
    """An order for every node, for a room or for a user decodes to what was encoded."""
    assert decode_publication(encode_publication(publication)) == publication


@given(publications)
def test_publication_round_trip(publication: Publication) -> None:
    """Any room or user publication decodes to exactly what was encoded."""
    assert decode_publication(encode_publication(publication)) == publication


@given(st.lists(publications, max_size=8))
def test_batch_round_trip(batch: list[Publication]) -> None:
    """A batch of publications unpacks to the same publications in the same order."""
    packed = pack_batch([encode_publication(p) for p in batch])
    assert [decode_publication(item) for item in unpack_batch(packed)] == batch


@given(st.binary(max_size=200))
def test_garbage_is_refused_with_value_error(data: bytes) -> None:
    """Bytes that are not a publication raise ValueError, never anything else."""
    try:
        decode_publication(data)
    except ValueError:
        pass
    try:
        for item in unpack_batch(data):
            decode_publication(item)
    except ValueError:
        pass


def test_truncated_publication_is_refused() -> None:
    """A publication cut short is refused, not decoded into a shorter one."""
    data = encode_publication(Publication("n1", "room", None, b"", skip_user="ann", seq=1))
    with pytest.raises(ValueError):
        decode_publication(data[:-1])
    with pytest.raises(ValueError):
        unpack_batch(pack_batch([data])[:-1])


def test_publication_needs_a_target() -> None:
    """A publication for neither a room nor a user cannot be encoded."""
    with pytest.raises(ValueError):
        encode_publication(Publication("n1", None, None, b"x"))
