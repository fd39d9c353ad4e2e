"""The ``roomcast`` command.

Every ``serve`` flag also reads ``ROOMCAST_<FLAG>`` from the environment
(``--data-dir`` from ``ROOMCAST_DATA_DIR``); a flag on the command line
wins. Bad configuration is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import ipaddress
import os
import re
import secrets
import sys
import time
import urllib.parse
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, NoReturn

import orjson

from . import __version__, logs
from .accounts import PASSWORD_HASHES, Accounts, password_problem, username_problem
from .api_admin import ban_reason, ban_until
from .auth import Tokens
from .broker import open_broker
from .config import (
    DEFAULT_LIMITS,
    MIN_SECRET_BYTES,
    MIN_WEBHOOK_SECRET_BYTES,
    Limits,
    ServerConfig,
    Webhook,
    load_secret,
    make_ssl_context,
    prepare_data_dir,
)
from .exceptions import BackendError, ConfigError, DomainError
from .files import FileLinks, FileStore
from .model import AuditEntry
from .node import Node
from .protocol.messages import LOBBY, until_text, valid_room
from .quota import open_quotas
from .revocation import ACCOUNT_DELETED, BANNED, SIGNED_OUT, revoke_order
from .server import RoomcastServer
from .store import open_store
from .store.sql import SQLStore
from .workers import MAX_WORKERS, WORKER_ENV, available_cpus, stop_when_orphaned, supervise

__all__ = ["build_parser", "config_from_args", "main"]

#: Seconds within which a node refreshes its presence in Redis when the
#: heartbeat is off (otherwise the heartbeat interval).
DEFAULT_PRESENCE_TTL = 30.0


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line on stderr and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"roomcast: error: {message}\n")


def _env_default(environ: Mapping[str, str], flag: str, default: Any) -> Any:
    key = "ROOMCAST_" + flag.lstrip("-").replace("-", "_").upper()
    return environ.get(key, default)


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The argument parser, with defaults taken from ``environ``."""
    env = os.environ if environ is None else environ
    parser = _Parser(prog="roomcast", description="Real-time chat over WebSocket.")
    parser.add_argument("--version", action="version", version=f"roomcast {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    serve = commands.add_parser(
        "serve",
        help="run the chat server",
        description=(
            "Run the chat server: HTTP and WebSocket on one port. Every flag also reads "
            "the environment variable ROOMCAST_<FLAG> (e.g. ROOMCAST_PORT); flags win."
        ),
    )

    def add(flag: str, default: Any, help: str, **kwargs: Any) -> None:
        serve.add_argument(flag, default=_env_default(env, flag, default), help=help, **kwargs)

    add("--host", "127.0.0.1", "address to listen on (default: %(default)s)")
    add("--port", 8765, "port to listen on; 0 picks a free one (default: %(default)s)")
    add(
        "--workers",
        1,
        "nodes to run on this host, one process (one core) each, all on --port; auto is "
        "one per CPU; more than 1 needs --redis-url and a postgresql:// --database-url "
        "(default: %(default)s)",
    )
    add(
        "--data-dir",
        "./roomcast-data",
        "directory for the embedded database and the generated secret (default: %(default)s)",
    )
    add(
        "--database-url",
        None,
        "where messages are kept: postgresql://USER@HOST/DB, sqlite:PATH, or memory: "
        "(lost at exit); default: roomcast.db in the data dir",
    )
    add(
        "--redis-url",
        None,
        "redis://HOST:PORT/DB: fan messages and presence out through Redis so several "
        "servers sharing one --database-url act as one; default: this process only",
    )
    add(
        "--redis-prefix",
        "roomcast:",
        "what this service's Redis keys and channel start with, to share a Redis with "
        "others (default: %(default)s)",
    )
    add(
        "--history-days",
        0,
        "delete messages older than this many days (at least 1); 0 keeps them all "
        "(default: %(default)s)",
    )
    add("--tls-cert", None, "PEM certificate chain; with --tls-key serves https:// and wss://")
    add("--tls-key", None, "PEM private key for --tls-cert")
    origins = env.get("ROOMCAST_ALLOWED_ORIGIN")
    serve.add_argument(
        "--allowed-origin",
        action="append",
        default=None,
        metavar="ORIGIN",
        help=(
            "a browser Origin allowed besides the server's own, e.g. https://chat.example.org; "
            "repeat for more (env: space-separated)"
        ),
    )
    serve.set_defaults(env_allowed_origins=origins.split() if origins else [])
    proxies = env.get("ROOMCAST_TRUSTED_PROXY")
    serve.add_argument(
        "--trusted-proxy",
        action="append",
        default=None,
        metavar="ADDR",
        help=(
            "a reverse proxy (address, or network such as 10.0.0.0/8) whose X-Forwarded-For "
            "names the client, for per-address limits; repeat for more (env: space-separated)"
        ),
    )
    serve.set_defaults(env_trusted_proxies=proxies.split() if proxies else [])
    serve.add_argument(
        "--password-hash",
        choices=sorted(PASSWORD_HASHES),
        default=env.get("ROOMCAST_PASSWORD_HASH", "default"),
        help="how hard passwords are hashed (argon2id): default (RFC 9106, 64 MiB) or small "
        "(OWASP's minimum, 19 MiB: 4x less CPU and memory per sign-in)",
    )
    serve.add_argument(
        "--no-guests",
        action="store_const",
        const="1",
        default=env.get("ROOMCAST_NO_GUESTS", "0"),
        help="refuse guests: a connection must auth with a token within 10 s",
    )
    add(
        "--secret",
        None,
        "secret that signs tokens (at least 32 bytes); by default one is generated once "
        "and kept in the data dir",
    )
    add(
        "--heartbeat",
        30.0,
        "seconds between pings; a client that has not answered by the next ping is dropped; "
        "0 turns it off (default: %(default)s)",
    )
    add(
        "--rate-limit",
        20.0,
        "chat-like frames a second per connection (commands such as join and ping get five "
        "times as many); 0 turns rate limits off (default: %(default)s)",
    )
    add(
        "--rate-burst",
        40,
        "frames a connection may send at once before --rate-limit applies "
        "(commands: five times as many) (default: %(default)s)",
    )
    add(
        "--max-connections-per-user",
        10,
        "connections one user may have open; 0 is no cap (default: %(default)s)",
    )
    add(
        "--max-connections-per-ip",
        0,
        "connections one IP address may have open; 0 is no cap, for clients behind a "
        "shared proxy (default: %(default)s)",
    )
    add(
        "--max-http-connections-per-ip",
        DEFAULT_LIMITS.max_http_connections_per_ip,
        "connections one IP address may have open that are not WebSockets (page loads, API "
        "calls); past it 429; 0 is no cap; trusted proxies are not counted "
        "(default: %(default)s)",
    )
    add(
        "--body-timeout",
        ServerConfig().body_timeout,
        "seconds an HTTP request's body may take to arrive; past it 408 and the connection "
        "is closed (default: %(default)s)",
    )
    add(
        "--files-dir",
        None,
        "where files sent over WebSocket are kept; several nodes must share one "
        "(default: files in the data dir)",
    )
    add(
        "--max-file-size",
        8 * 1024 * 1024,
        "largest file a binary frame may carry, in bytes; a bigger frame closes the "
        "connection with 1009 (default: %(default)s)",
    )
    add(
        "--max-replay",
        DEFAULT_LIMITS.max_replay,
        "most messages one join with since replays (the newest); clients read older ones "
        "with history (default: %(default)s)",
    )
    add(
        "--upload-quota",
        DEFAULT_LIMITS.upload_quota,
        "bytes of files one user may send in 24 hours; 0 is no quota (default: %(default)s)",
    )
    add(
        "--files-quota",
        DEFAULT_LIMITS.files_quota,
        "bytes all kept files may take together; 0 is no quota (default: %(default)s)",
    )
    add(
        "--webhook-url",
        None,
        "http(s) URL to POST a signed notification to when a user with no open connection "
        "gets a direct message or a mention (default: none)",
    )
    add(
        "--webhook-secret",
        None,
        f"key of the notifications' HMAC-SHA256 signature, at least "
        f"{MIN_WEBHOOK_SECRET_BYTES} bytes; needed with --webhook-url",
    )
    add(
        "--log-level",
        "info",
        "debug, info, warning or error (default: %(default)s)",
        choices=["debug", "info", "warning", "error"],
        type=str.lower,
    )
    add(
        "--log-format",
        "text",
        "text (for people) or json (one object per line, for machines) (default: %(default)s)",
        choices=list(logs.FORMATS),
        type=str.lower,
    )
    _add_chat(commands)
    _add_admin(commands, env)
    return parser


def _add_chat(commands: Any) -> None:
    chat = commands.add_parser(
        "chat",
        help="chat in a terminal",
        description=(
            "Chat in a terminal: plain lines go to the current room; /help lists the "
            "commands. --user asks for the password, or reads ROOMCAST_PASSWORD."
        ),
    )
    chat.add_argument(
        "--url",
        default="ws://127.0.0.1:8765/ws",
        help="the server's WebSocket URL (default: %(default)s)",
    )
    who = chat.add_mutually_exclusive_group()
    who.add_argument("--user", metavar="NAME", help="sign in as this registered user")
    who.add_argument("--guest", metavar="NAME", help="chat as a guest with this nickname")
    chat.add_argument(
        "--room", default=LOBBY, help="join this room and talk there (default: %(default)s)"
    )


def _add_admin(commands: Any, env: Mapping[str, str]) -> None:
    admin = commands.add_parser(
        "admin",
        help="manage users and rooms on the server's database",
        description=(
            "Manage users and rooms on the configured database (the one serve uses: the "
            "same flags and ROOMCAST_* variables). With --redis-url the live servers act at "
            "once; without, they close revoked sessions within 3 s all the same."
        ),
    )

    def add(flag: str, default: Any, help: str, **kwargs: Any) -> None:
        admin.add_argument(flag, default=_env_default(env, flag, default), help=help, **kwargs)

    add("--data-dir", "./roomcast-data", "the data dir of the embedded database")
    add("--database-url", None, "postgresql://USER@HOST/DB or sqlite:PATH, as for serve")
    add("--redis-url", None, "redis://HOST:PORT/DB: tell the live servers at once")
    add("--redis-prefix", "roomcast:", "the servers' --redis-prefix (default: %(default)s)")
    admin.add_argument(
        "--password-hash",
        choices=sorted(PASSWORD_HASHES),
        default=env.get("ROOMCAST_PASSWORD_HASH", "default"),
        help="how a new password is hashed, as for serve (default: %(default)s)",
    )
    actions = admin.add_subparsers(
        dest="action", required=True, parser_class=_Parser, metavar="COMMAND"
    )
    create = actions.add_parser(
        "create-admin",
        help="create an admin (password from stdin) or make a user one",
        description=(
            "Create the user NAME as an admin, with a password read from stdin (one line; "
            "asked twice on a terminal), or make the existing user NAME an admin."
        ),
    )
    create.add_argument("name", metavar="NAME")
    for action, text in (("promote", "make NAME an admin"), ("demote", "make NAME no admin")):
        actions.add_parser(action, help=text, description=text).add_argument("name", metavar="NAME")
    ban = actions.add_parser(
        "ban",
        help="ban a user everywhere (signs them out)",
        description="Ban NAME from the whole server, until lifted or for a time; every "
        "session of theirs ends.",
    )
    ban.add_argument("name", metavar="NAME")
    how_long = ban.add_mutually_exclusive_group()
    how_long.add_argument("--for", dest="duration", metavar="DURATION", help="90s, 30m, 12h, 7d")
    how_long.add_argument("--until", metavar="ISO", help="an ISO 8601 time, like 2030-01-31T12:00Z")
    ban.add_argument("--reason", default="", help="why, as the user is told")
    actions.add_parser("unban", help="lift a ban", description="Lift NAME's ban.").add_argument(
        "name", metavar="NAME"
    )
    actions.add_parser(
        "reset-password",
        help="give a user a new password (signs them out)",
        description=(
            "Give NAME a new password: one line from stdin, or, when stdin is a terminal "
            "or empty, a generated one, printed. Every session of theirs ends."
        ),
    ).add_argument("name", metavar="NAME")
    actions.add_parser(
        "delete-user",
        help="delete an account",
        description="Erase the account NAME: its sessions, memberships, reactions, and the "
        "text and files of its messages (which stay as deleted tombstones).",
    ).add_argument("name", metavar="NAME")
    actions.add_parser(
        "list-rooms",
        help="list every room",
        description="Every stored room, one a line: name, public or private, owner, "
        "moderators, title (tab-separated).",
    )
    actions.add_parser(
        "delete-room", help="delete a room", description="Erase ROOM and every message in it."
    ).add_argument("room", metavar="ROOM")


def _number(value: Any, flag: str, kind: type[int] | type[float], low: float, high: float) -> Any:
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{flag} must be a number, not {value!r}") from None
    if not low <= number <= high:
        raise ConfigError(f"{flag} must be between {low:g} and {high:g}, not {value}")
    return number


def _flag(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"", "0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be 1/true/yes/on or 0/false/no/off, not {value!r}")


def _password_hash(name: str) -> str:
    """``name`` if it names a password hash setting (the environment is not checked by argparse)."""
    if name not in PASSWORD_HASHES:
        raise ConfigError(f"--password-hash must be one of {', '.join(sorted(PASSWORD_HASHES))}")
    return name


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """Check the parsed flags and turn them into a :class:`ServerConfig`."""
    port = _number(args.port, "--port", int, 0, 65535)
    heartbeat = _number(args.heartbeat, "--heartbeat", float, 0, 86400)
    history_days = _number(args.history_days, "--history-days", int, 0, 100_000)
    limits = Limits(
        rate_limit=_number(args.rate_limit, "--rate-limit", float, 0, 1_000_000),
        rate_burst=_number(args.rate_burst, "--rate-burst", int, 1, 1_000_000),
        max_connections_per_user=_number(
            args.max_connections_per_user, "--max-connections-per-user", int, 0, 1_000_000
        ),
        max_connections_per_ip=_number(
            args.max_connections_per_ip, "--max-connections-per-ip", int, 0, 1_000_000
        ),
        max_file_size=_number(args.max_file_size, "--max-file-size", int, 1, 1024**3),
        max_replay=_number(args.max_replay, "--max-replay", int, 1, 1_000_000),
        upload_quota=_number(args.upload_quota, "--upload-quota", int, 0, 2**50),
        files_quota=_number(args.files_quota, "--files-quota", int, 0, 2**50),
        max_http_connections_per_ip=_number(
            args.max_http_connections_per_ip, "--max-http-connections-per-ip", int, 0, 1_000_000
        ),
    )
    body_timeout = _number(args.body_timeout, "--body-timeout", float, 0.1, 3600)
    trusted_proxies = tuple(args.trusted_proxy or args.env_trusted_proxies)
    for proxy in trusted_proxies:
        if not _is_network(proxy):
            raise ConfigError(
                f"--trusted-proxy must be an IP address or network (10.0.0.0/8), not {proxy!r}"
            )
    # An empty ROOMCAST_SECRET is a mistake too, not "generate one": nodes
    # that each generated their own would refuse each other's tokens.
    if args.secret is not None and len(args.secret.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"--secret (or ROOMCAST_SECRET) must be at least {MIN_SECRET_BYTES} bytes long, "
            f"not {len(args.secret.encode())}"
        )
    database_url, redis_url = args.database_url or None, args.redis_url or None
    workers = _workers(args.workers)
    if workers > 1 and (redis_url is None or not _shared_database(database_url)):
        raise ConfigError(
            f"--workers {workers} runs {workers} nodes, which act as one server only through "
            "a broker and a shared database: add --redis-url redis://... and "
            "--database-url postgresql://..."
        )
    if redis_url is not None and not _shared_database(database_url):
        raise ConfigError(
            "--redis-url joins this server to others, which must share its database: "
            "add --database-url postgresql://..."
        )
    if not args.redis_prefix or any(c.isspace() for c in args.redis_prefix):
        raise ConfigError("--redis-prefix must be a non-empty word, such as roomcast:")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key must be given together")
    origins = tuple(args.allowed_origin or args.env_allowed_origins)
    for origin in origins:
        if "://" not in origin or origin.rstrip("/") != origin:
            raise ConfigError(f"--allowed-origin must look like https://host[:port], not {origin}")
    return ServerConfig(
        webhook=_webhook(args.webhook_url or None, args.webhook_secret or None),
        host=args.host,
        port=port,
        data_dir=Path(args.data_dir),
        tls_cert=Path(args.tls_cert) if args.tls_cert else None,
        tls_key=Path(args.tls_key) if args.tls_key else None,
        allowed_origins=origins,
        secret=args.secret,
        guests=not _flag(args.no_guests, "ROOMCAST_NO_GUESTS"),
        password_hash=_password_hash(args.password_hash),
        database_url=database_url,
        redis_url=redis_url,
        redis_prefix=args.redis_prefix,
        history_days=history_days,
        files_dir=Path(args.files_dir) if args.files_dir else None,
        heartbeat=heartbeat,
        body_timeout=body_timeout,
        trusted_proxies=trusted_proxies,
        limits=limits,
        workers=workers,
    )


def _workers(value: Any) -> int:
    """``--workers``: a number from 1 to :data:`MAX_WORKERS`, or ``auto`` (one per CPU)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return min(available_cpus(), MAX_WORKERS)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--workers must be a number or auto, not {value!r}") from None
    if not 1 <= number <= MAX_WORKERS:
        raise ConfigError(f"--workers must be between 1 and {MAX_WORKERS} (or auto), not {value}")
    return number


def _webhook(url: str | None, secret: str | None) -> Webhook | None:
    """The webhook of ``--webhook-url`` and ``--webhook-secret``, checked; None without a URL."""
    if url is None:
        if secret is not None:
            raise ConfigError("--webhook-secret needs --webhook-url")
        return None
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # Not repeated: a URL may carry a password.
        raise ConfigError("--webhook-url must be an http:// or https:// URL with a host")
    if secret is None or len(secret.encode()) < MIN_WEBHOOK_SECRET_BYTES:
        raise ConfigError(
            f"--webhook-url needs --webhook-secret (or ROOMCAST_WEBHOOK_SECRET) of at least "
            f"{MIN_WEBHOOK_SECRET_BYTES} bytes, to sign what it posts"
        )
    return Webhook(url, secret)


def _is_network(text: str) -> bool:
    """Whether ``text`` is an IP address or network (what ``--trusted-proxy`` takes)."""
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


def _shared_database(url: str | None) -> bool:
    """Whether ``url`` is a database several servers can share (PostgreSQL)."""
    return url is not None and url.split(":", 1)[0].lower() in {"postgres", "postgresql"}


def _configure_logging(level: str, fmt: str) -> None:
    # argparse checks choices on the command line only, not on ROOMCAST_* defaults.
    if level not in logs.LEVELS:
        raise ConfigError(f"--log-level must be one of {', '.join(logs.LEVELS)}, not {level!r}")
    if fmt not in logs.FORMATS:
        raise ConfigError(f"--log-format must be one of {', '.join(logs.FORMATS)}, not {fmt!r}")
    logs.configure(level, fmt, sys.stderr)


async def _serve(config: ServerConfig, *, worker: bool = False) -> None:
    data_dir = prepare_data_dir(config.data_dir)
    secret = load_secret(data_dir, config.secret)
    tokens = Tokens(secret)
    ssl_context = None
    if config.tls_cert is not None and config.tls_key is not None:
        ssl_context = make_ssl_context(config.tls_cert, config.tls_key)
    store = open_store(config.database_url, data_dir=data_dir, history_days=config.history_days)
    broker = open_broker(
        config.redis_url,
        prefix=config.redis_prefix,
        presence_ttl=config.heartbeat or DEFAULT_PRESENCE_TTL,
    )
    # Guest names, connections per user and logins, counted over every node
    # (a dead node's claims go when its presence would).
    quotas = open_quotas(
        config.redis_url,
        prefix=config.redis_prefix,
        ttl=config.heartbeat or DEFAULT_PRESENCE_TTL,
    )
    node = Node(
        store=store,
        broker=broker,
        limits=config.limits,
        heartbeat=config.heartbeat,
        guests=config.guests,
        accounts=Accounts(store, tokens, hasher=PASSWORD_HASHES[config.password_hash]()),
        files=FileStore(config.files_dir or data_dir / "files", quota=config.limits.files_quota),
        links=FileLinks(secret),
        webhook=config.webhook,
        quotas=quotas,
    )
    if isinstance(store, SQLStore):  # both databases time their batches
        store.on_batch = node.metrics.observe_batch
    server = RoomcastServer(node, config)
    if worker:
        stop_when_orphaned()
    try:
        await server.serve_until_signalled(ssl_context)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}"
        ) from None
    except BackendError as exc:
        raise ConfigError(str(exc)) from None


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _chat(args: argparse.Namespace) -> int:
    url = urllib.parse.urlsplit(args.url)
    if url.scheme not in ("ws", "wss") or not url.hostname:
        raise ConfigError(f"--url must look like ws://host:port/ws, not {args.url!r}")
    if not valid_room(args.room):
        raise ConfigError(f"--room must match [a-z0-9][a-z0-9_-]{{0,63}}, not {args.room!r}")
    if not sys.stdin.isatty():
        raise ConfigError("roomcast chat needs a terminal")
    try:
        from .client.terminal import run_chat
    except ImportError as exc:
        raise ConfigError(f"roomcast chat cannot load {exc.name}: reinstall roomcast") from None
    password = os.environ.get("ROOMCAST_PASSWORD") if args.user else None
    return asyncio.run(
        run_chat(args.url, user=args.user, password=password, guest=args.guest, room=args.room)
    )


# -- roomcast admin -------------------------------------------------------------------

#: Who the CLI's actions are by, in audit entries and ``removed`` frames: not a
#: name anyone can register.
CLI_ACTOR = "(admin)"
_DURATION = re.compile(r"([1-9][0-9]{0,9})([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class _Refused(Exception):
    """Bad input or an unknown user or room: one line on stderr, exit 2."""


def _admin(args: argparse.Namespace) -> int:
    """Run ``roomcast admin COMMAND``; the exit status (0, 2 refused, 1 failed)."""
    logs.configure("warning", "text", sys.stderr)
    try:
        with asyncio.Runner(loop_factory=_new_loop) as runner:
            return runner.run(_admin_run(args))
    except (ConfigError, _Refused, DomainError) as exc:
        print(f"roomcast: error: {exc}", file=sys.stderr)
        return 2
    except BackendError as exc:
        print(f"roomcast: error: the database failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # never a traceback
        print(f"roomcast: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


async def _admin_run(args: argparse.Namespace) -> int:
    url = args.database_url or None
    if url == "memory:":
        raise ConfigError("roomcast admin needs the servers' database; memory: is nobody's")
    if args.redis_url and args.redis_url.split(":", 1)[0].lower() not in {
        "redis",
        "rediss",
        "unix",
    }:
        raise ConfigError("--redis-url must be redis://HOST:PORT/DB (or rediss://)")
    _password_hash(args.password_hash)
    data_dir = Path(args.data_dir)
    if url is None:
        database = data_dir / "roomcast.db"
        if args.action != "create-admin" and not database.is_file():
            raise ConfigError(f"no database at {database}: give --data-dir or --database-url")
        data_dir = prepare_data_dir(data_dir)
    store = open_store(url, data_dir=data_dir)
    await store.open()
    try:
        accounts = Accounts(
            store,
            Tokens(secrets.token_urlsafe(48)),  # signs nothing: the CLI issues no tokens
            hasher=PASSWORD_HASHES[args.password_hash](),
        )
        return await _ADMIN_ACTIONS[args.action](args, accounts)
    finally:
        await store.close()


async def _create_admin(args: argparse.Namespace, accounts: Accounts) -> int:
    name = args.name
    if await accounts.store.get_user(name) is None:
        problem = username_problem(name)
        if problem is not None:
            raise _Refused(problem)
        password = _new_password(name)
        if password is None:
            raise _Refused(f"give {name}'s password on stdin (one line)")
        await accounts.register(name, password)
    user, _ = await accounts.set_admin(name, True, by=CLI_ACTOR)
    print(f"{user.name} is an admin")
    return 0


def _new_password(name: str) -> str | None:
    """A password from stdin: asked twice on a terminal, else its first line; None if empty.

    Raises:
        _Refused: the two answers differ, or it is not a valid password.
    """
    if sys.stdin is None:
        return None
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != password:
            raise _Refused("the passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        return None
    problem = password_problem(password)
    if problem is not None:
        raise _Refused(problem)
    return password


async def _set_admin(args: argparse.Namespace, accounts: Accounts) -> int:
    on = args.action == "promote"
    user, revoked = await accounts.set_admin(args.name, on, by=CLI_ACTOR)
    await _revoked(args, revoked, user.name, SIGNED_OUT)
    print(f"{user.name} is an admin" if on else f"{user.name} is no admin")
    return 0


async def _ban(args: argparse.Namespace, accounts: Accounts) -> int:
    body: dict[str, Any] = {}
    if args.duration is not None:
        match = _DURATION.fullmatch(args.duration.strip())
        if match is None:
            raise _Refused(f"--for must look like 90s, 30m, 12h or 7d, not {args.duration!r}")
        body["for"] = int(match[1]) * _UNITS[match[2]]
    elif args.until is not None:
        body["until"] = args.until
    until_ms = ban_until(body, int(time.time() * 1000))
    user, revoked = await accounts.ban_user(
        args.name, until_ms, ban_reason(args.reason), by=CLI_ACTOR
    )
    await _revoked(args, revoked, user.name, BANNED)
    until = until_text(until_ms)
    print(f"{user.name} is banned " + (f"until {until}" if until else "until unbanned"))
    return 0


async def _unban(args: argparse.Namespace, accounts: Accounts) -> int:
    user = await accounts.unban_user(args.name, by=CLI_ACTOR)
    print(f"{user.name} is not banned")
    return 0


async def _reset_password(args: argparse.Namespace, accounts: Accounts) -> int:
    user = await accounts.user(args.name)
    given = None
    if sys.stdin is not None and not sys.stdin.isatty():
        given = _new_password(user.name)
    _, password, revoked = await accounts.reset_password(user.name, given, by=CLI_ACTOR)
    await _revoked(args, revoked, user.name, SIGNED_OUT)
    if given is None:
        print(f"new password for {user.name}: {password}")
    else:
        print(f"{user.name}'s password is changed")
    return 0


async def _delete_user(args: argparse.Namespace, accounts: Accounts) -> int:
    user, revoked = await accounts.delete_user(args.name, by=CLI_ACTOR)
    await _revoked(args, revoked, user.name, ACCOUNT_DELETED)
    print(f"{user.name} is deleted")
    return 0


async def _list_rooms(args: argparse.Namespace, accounts: Accounts) -> int:
    for room in await accounts.store.all_rooms():
        fields = (
            room.name,
            "private" if room.private else "public",
            room.owner or "-",
            ",".join(sorted(room.moderators)) or "-",
            room.title or room.name,
        )
        print("\t".join(field.replace("\t", " ") for field in fields))
    return 0


async def _delete_room(args: argparse.Namespace, accounts: Accounts) -> int:
    room = args.room
    if not valid_room(room):
        raise _Refused(f"room names match [a-z0-9][a-z0-9_-]{{0,63}}, not {room!r}")
    if room == LOBBY:
        raise _Refused("the lobby cannot be deleted")
    entry = AuditEntry(room, int(time.time() * 1000), CLI_ACTOR, "delete_room")
    if not await accounts.store.delete_room(room, entry):
        raise _Refused(f"there is no room {room}")
    await _publish(args, orjson.dumps({"op": "room_deleted", "room": room, "by": CLI_ACTOR}))
    print(f"{room} is deleted")
    return 0


async def _revoked(args: argparse.Namespace, revoked: list[str], user: str, reason: str) -> None:
    """Tell the live servers about sessions revoked, with --redis-url (else they poll)."""
    if revoked:
        await _publish(args, revoke_order(revoked, user, reason))


async def _publish(args: argparse.Namespace, order: bytes) -> None:
    """Publish ``order`` to every live server as a node's broker does, with --redis-url.

    A failure is a warning: what the order says is stored, and the servers'
    poll of revoked sessions closes them all the same.
    """
    if not args.redis_url:
        return
    from .broker.base import Publication
    from .broker.redis import publish_order
    from .broker.redis_client import REDIS_ERRORS

    publication = Publication(f"cli-{secrets.token_hex(4)}", None, None, order, order=True)
    try:
        await publish_order(args.redis_url, args.redis_prefix, publication)
    except (*REDIS_ERRORS, ValueError) as exc:
        print(
            f"roomcast: warning: could not tell the live servers through Redis ({exc}); "
            "they close revoked sessions within 3 s all the same",
            file=sys.stderr,
        )


_ADMIN_ACTIONS: Final[
    dict[str, Callable[[argparse.Namespace, Accounts], Coroutine[Any, Any, int]]]
] = {
    "create-admin": _create_admin,
    "promote": _set_admin,
    "demote": _set_admin,
    "ban": _ban,
    "unban": _unban,
    "reset-password": _reset_password,
    "delete-user": _delete_user,
    "list-rooms": _list_rooms,
    "delete-room": _delete_room,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``roomcast`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "admin":
        return _admin(args)
    if args.command == "chat":
        try:
            return _chat(args)
        except ConfigError as exc:
            print(f"roomcast: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 0
    # A worker of ``--workers`` (its parent set this): a node on the shared port.
    worker = bool(os.environ.get(WORKER_ENV))
    try:
        config = config_from_args(args)
        _configure_logging(args.log_level, args.log_format)
        if worker:
            config = dataclasses.replace(config, workers=1, reuse_port=True)
        elif config.workers > 1:
            return supervise(config, sys.argv[1:] if argv is None else argv)
        with asyncio.Runner(loop_factory=_new_loop) as runner:
            runner.run(_serve(config, worker=worker))
    except ConfigError as exc:
        print(f"roomcast: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
