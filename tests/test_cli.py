"""Flags, environment variables and configuration checks (no server started)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from roomcast.cli import build_parser, config_from_args, main
from roomcast.config import load_secret, make_ssl_context, prepare_data_dir
from roomcast.exceptions import ConfigError


def config(argv: list[str], env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return config_from_args(build_parser(env or {}).parse_args(["serve", *argv]))


def test_defaults() -> None:
    """With no flags the server listens on 127.0.0.1:8765 with a 30 s heartbeat."""
    cfg = config([])
    assert (cfg.host, cfg.port, cfg.heartbeat, cfg.scheme) == ("127.0.0.1", 8765, 30.0, "http")
    assert cfg.data_dir == Path("./roomcast-data")


def test_environment_and_flags() -> None:
    """ROOMCAST_* variables set defaults; flags win over them."""
    env = {
        "ROOMCAST_PORT": "9000",
        "ROOMCAST_HEARTBEAT": "7",
        "ROOMCAST_ALLOWED_ORIGIN": "https://a.example https://b.example",
        "ROOMCAST_DATA_DIR": "/tmp/x",
    }
    cfg = config([], env)
    assert (cfg.port, cfg.heartbeat, cfg.data_dir) == (9000, 7.0, Path("/tmp/x"))
    assert cfg.allowed_origins == ("https://a.example", "https://b.example")
    cfg = config(["--port", "9001", "--allowed-origin", "https://c.example"], env)
    assert cfg.port == 9001
    assert cfg.allowed_origins == ("https://c.example",)


def test_abuse_limits_from_flags_and_environment() -> None:
    """Rate limits and connection caps default to 20/s, 40, 10 and off; env and flags set them."""
    limits = config([]).limits
    assert (limits.rate_limit, limits.rate_burst) == (20.0, 40)
    assert (limits.max_connections_per_user, limits.max_connections_per_ip) == (10, 0)
    env = {"ROOMCAST_RATE_LIMIT": "0", "ROOMCAST_MAX_CONNECTIONS_PER_IP": "50"}
    limits = config(["--rate-burst", "7", "--max-connections-per-user", "0"], env).limits
    assert (limits.rate_limit, limits.rate_burst) == (0.0, 7)
    assert (limits.max_connections_per_user, limits.max_connections_per_ip) == (0, 50)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "abc"], "--port must be a number"),
        (["--port", "70000"], "--port must be between"),
        (["--heartbeat", "-1"], "--heartbeat must be between"),
        (["--tls-cert", "c.pem"], "must be given together"),
        (["--allowed-origin", "example.org"], "--allowed-origin must look like"),
        (["--history-days", "1.5"], "--history-days must be a number"),
        (["--secret", "x" * 31], r"--secret \(or ROOMCAST_SECRET\) must be at least 32 bytes"),
        (["--secret", ""], "must be at least 32 bytes long, not 0"),
        (["--rate-limit", "-1"], "--rate-limit must be between"),
        (["--rate-limit", "nan"], "--rate-limit must be between"),
        (["--rate-burst", "0"], "--rate-burst must be between"),
        (["--max-connections-per-user", "-1"], "--max-connections-per-user must be between"),
        (["--max-connections-per-ip", "two"], "--max-connections-per-ip must be a number"),
    ],
)
def test_bad_flags(argv: list[str], message: str) -> None:
    """Bad values are a ConfigError with a one-line message."""
    with pytest.raises(ConfigError, match=message) as info:
        config(argv)
    assert "\n" not in str(info.value)


def test_missing_tls_files(tmp_path: Path) -> None:
    """A missing certificate is a ConfigError naming the file."""
    with pytest.raises(ConfigError, match="no such file"):
        make_ssl_context(tmp_path / "nope.pem", tmp_path / "key.pem")


def test_garbage_tls_files(tmp_path: Path) -> None:
    """A file that is not a certificate is a ConfigError."""
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError, match="cannot load TLS certificate"):
        make_ssl_context(bad, bad)


def test_data_dir_must_be_writable(tmp_path: Path) -> None:
    """A data dir that is a file is refused; a new one is created."""
    afile = tmp_path / "file"
    afile.write_text("")
    with pytest.raises(ConfigError):
        prepare_data_dir(afile)
    assert prepare_data_dir(tmp_path / "new" / "dir").is_dir()


def test_secret_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    """Without --secret one is generated, kept with mode 0600, and reused."""
    first = load_secret(tmp_path, None)
    assert len(first) >= 32
    assert os.stat(tmp_path / "secret").st_mode & 0o777 == 0o600
    assert load_secret(tmp_path, None) == first
    assert load_secret(tmp_path, "given" * 7) == "given" * 7


def test_log_format_from_flag_and_environment() -> None:
    """--log-format defaults to text; ROOMCAST_LOG_FORMAT sets it (any case); the flag wins."""
    assert build_parser({}).parse_args(["serve"]).log_format == "text"
    env = {"ROOMCAST_LOG_FORMAT": "JSON"}
    assert build_parser(env).parse_args(["serve"]).log_format == "json"
    assert build_parser(env).parse_args(["serve", "--log-format", "text"]).log_format == "text"


@pytest.mark.parametrize("variable", ["ROOMCAST_LOG_FORMAT", "ROOMCAST_LOG_LEVEL"])
def test_bad_log_setting_in_the_environment_is_one_line_and_exit_2(
    variable: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """argparse checks choices only on the command line; the environment is checked too."""
    monkeypatch.setenv(variable, "xml")
    assert main(["serve", "--port", "0", "--data-dir", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("roomcast: error: --log-"), err


def test_short_secrets_exit_2_with_one_line(tmp_path: Path) -> None:
    """A truncated secret file, or a short ROOMCAST_SECRET, is one error line and exit 2."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "secret").write_text("truncated\n")
    runs = {
        "secret is damaged": run_serve("--data-dir", str(data)),
        "ROOMCAST_SECRET": run_serve(
            "--data-dir", str(tmp_path / "other"), env={"ROOMCAST_SECRET": "x" * 31}
        ),
    }
    for mention, result in runs.items():
        assert result.returncode == 2, (result.returncode, result.stderr)
        assert "Traceback" not in result.stderr and "roomcast listening" not in result.stdout
        assert result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith("roomcast: error: ") and mention in result.stderr
    assert (data / "secret").read_text() == "truncated\n"


def run_serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``roomcast serve --port 0 ARGS`` in a process of its own (killed after 20 s)."""
    return subprocess.run(
        [sys.executable, "-m", "roomcast", "serve", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, **(env or {})},
    )


def test_password_hash_setting() -> None:
    """--password-hash picks argon2id's settings; the environment sets it; a bad name is refused."""
    from argon2 import PasswordHasher

    from roomcast.accounts import PASSWORD_HASHES

    assert config([]).password_hash == "default"
    assert config(["--password-hash", "small"]).password_hash == "small"
    assert config([], {"ROOMCAST_PASSWORD_HASH": "small"}).password_hash == "small"
    with pytest.raises(ConfigError):
        config([], {"ROOMCAST_PASSWORD_HASH": "tiny"})
    small = PASSWORD_HASHES["small"]()
    assert (small.time_cost, small.memory_cost, small.parallelism) == (2, 19 * 1024, 1)
    # A hash made with either setting verifies with the other: each carries its own.
    stored = small.hash("correct horse battery")
    assert PasswordHasher().verify(stored, "correct horse battery")


#: What --workers N>1 needs: a broker and a shared database.
SCALE_OUT = ["--redis-url", "redis://127.0.0.1:6379/0", "--database-url", "postgresql://db/rc"]


def test_workers_from_flag_environment_and_auto() -> None:
    """--workers defaults to 1; ROOMCAST_WORKERS sets it; auto is one per CPU; the flag wins."""
    from roomcast.workers import available_cpus

    assert config([]).workers == 1
    assert config(SCALE_OUT, {"ROOMCAST_WORKERS": "3"}).workers == 3
    assert config([*SCALE_OUT, "--workers", "AUTO"]).workers == available_cpus()
    assert config([*SCALE_OUT, "--workers", "2"], {"ROOMCAST_WORKERS": "3"}).workers == 2
    assert config(["--workers", "1"]).reuse_port is False  # one node: as before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--workers", "0"], "--workers must be between 1 and 256 (or auto), not 0"),
        (["--workers", "257"], "--workers must be between 1 and 256"),
        (["--workers", "two"], "--workers must be a number or auto, not 'two'"),
        (["--workers", "1.5"], "--workers must be a number or auto"),
        (["--workers", "2"], "--workers 2 runs 2 nodes"),
        (["--workers", "2", "--redis-url", "redis://r"], "--workers 2 runs 2 nodes"),
        (["--workers", "2", "--database-url", "postgresql://db/rc"], "--workers 2 runs 2 nodes"),
        (["--workers", "2", "--redis-url", "redis://r", "--database-url", "memory:"], "--workers"),
    ],
)
def test_bad_workers(argv: list[str], message: str) -> None:
    """A bad --workers, or more than one without Redis and PostgreSQL, is a one-line ConfigError."""
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        config(argv)
    assert "\n" not in str(info.value)


def test_workers_without_a_broker_exit_2_before_listening(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """serve --workers 2 alone is one line on stderr and exit 2, nothing bound or started."""
    monkeypatch.delenv("ROOMCAST_WORKER_ID", raising=False)
    assert main(["serve", "--workers", "2", "--data-dir", str(tmp_path / "data")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err
    assert err.startswith("roomcast: error: --workers 2 runs 2 nodes, which act as one server")
    assert not (tmp_path / "data").exists()
