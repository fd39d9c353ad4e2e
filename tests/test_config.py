"""The signing secret kept in the data directory: written durably, read back checked."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from roomcast.config import MIN_SECRET_BYTES, _write_secret, load_secret
from roomcast.exceptions import ConfigError


def one_line_error(data_dir: Path) -> str:
    """load_secret's ConfigError, which must be one line."""
    with pytest.raises(ConfigError) as info:
        load_secret(data_dir, None)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_generated_secret_is_whole_private_and_kept(tmp_path: Path) -> None:
    """The generated secret is 64 characters and a newline, mode 0600, no temp file left."""
    value = load_secret(tmp_path, None)
    path = tmp_path / "secret"
    assert len(value) == 64 and path.read_text() == value + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]
    assert load_secret(tmp_path, None) == value


def test_a_generated_secret_is_fsynced_with_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The secret's bytes and then the directory entry naming it reach the disk."""
    synced: list[tuple[str, bool]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        target = Path(os.readlink(f"/proc/self/fd/{fd}"))
        synced.append((target.name if target != tmp_path else ".", (tmp_path / "secret").exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    load_secret(tmp_path, None)
    assert len(synced) == 2
    (file_name, placed), directory = synced
    assert file_name.startswith(".secret-") and not placed  # synced before it is the secret
    assert directory == (".", True)  # and the directory after


def test_a_secret_another_server_wrote_first_is_kept(tmp_path: Path) -> None:
    """Writing a new secret where one appeared meanwhile keeps and returns that one."""
    path = tmp_path / "secret"
    path.write_text("first-" * 8 + "\n")
    assert _write_secret(path, "second" * 8, replace=False) == "first-" * 8
    assert path.read_text() == "first-" * 8 + "\n"
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]


def test_an_empty_secret_file_left_by_a_crash_is_replaced(tmp_path: Path) -> None:
    """A zero-byte secret (an unsynced write before a crash) is regenerated, mode 0600."""
    path = tmp_path / "secret"
    path.write_bytes(b"")
    value = load_secret(tmp_path, None)
    assert len(value) == 64 and path.read_text() == value + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_secret(tmp_path, None) == value


@pytest.mark.parametrize(
    "content",
    [
        b"abc\n",
        b"\n",
        b"x" * (MIN_SECRET_BYTES - 1),
        b"\0" * 65,  # the right length, but zeros: a crash on some file systems
        b"\xff" * 40,  # not UTF-8
    ],
    ids=["truncated", "blank line", "one byte short", "zeros", "not utf-8"],
)
def test_a_damaged_secret_is_a_config_error_and_kept(tmp_path: Path, content: bytes) -> None:
    """A non-empty secret file that is no secret is one error line naming it; it is not replaced."""
    path = tmp_path / "secret"
    path.write_bytes(content)
    message = one_line_error(tmp_path)
    assert str(path) in message and "damaged" in message
    assert path.read_bytes() == content


def test_a_secret_of_exactly_the_minimum_is_read(tmp_path: Path) -> None:
    """A kept secret of 32 bytes (surrounding whitespace aside) is used as it is."""
    (tmp_path / "secret").write_text("  " + "k" * MIN_SECRET_BYTES + "\r\n")
    assert load_secret(tmp_path, None) == "k" * MIN_SECRET_BYTES


def test_an_unreadable_secret_is_a_config_error(tmp_path: Path) -> None:
    """A secret path that cannot be read (here a directory) is one error line, no traceback."""
    (tmp_path / "secret").mkdir()
    assert "cannot read" in one_line_error(tmp_path)


def test_a_given_secret_must_be_long_enough(tmp_path: Path) -> None:
    """A given secret under 32 bytes (or empty) is refused; one that long is used, not kept."""
    for short in ("", "x" * (MIN_SECRET_BYTES - 1)):
        with pytest.raises(ConfigError, match="at least 32 bytes"):
            load_secret(tmp_path, short)
    given = "g" * MIN_SECRET_BYTES
    assert load_secret(tmp_path, given) == given
    assert not (tmp_path / "secret").exists()
