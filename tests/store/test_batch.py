"""What the batching stores share, in isolation: the file column's stored form."""

from __future__ import annotations

import orjson
from hypothesis import given, settings, strategies as st

from roomcast.model import FileInfo
from roomcast.store.batch import file_from_column, file_to_column


@settings(max_examples=200, deadline=None)
@given(
    st.builds(
        FileInfo,
        name=st.text(min_size=1, max_size=255),
        mime=st.text(min_size=1, max_size=255),
        size=st.integers(min_value=0, max_value=2**63 - 1),
        sha256=st.text("0123456789abcdef", min_size=64, max_size=64),
        url=st.none() | st.text(max_size=50),
    )
)
def test_file_column_round_trip(info: FileInfo) -> None:
    """file_from_column(file_to_column()) gives back everything but the url, which is never kept."""
    text = file_to_column(info)
    assert set(orjson.loads(text)) == {"name", "mime", "size", "sha256"}
    back = file_from_column(text)
    assert back == FileInfo(info.name, info.mime, info.size, info.sha256)
    assert file_from_column(None) is None and file_from_column("") is None
