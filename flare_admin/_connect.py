"""What both Session flavours do before and right after dialling the server."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from flare_admin._errors import map_rpc_error
from flare_admin._ops import hello, timeout_value
from flare_admin.results import SessionInfo
from flare_protocol import _malloc, credentials
from flare_protocol.errors import APIError, AuthenticationError, InvalidArgumentError, KitError
from flare_protocol.identity import ParticipantType
from flare_protocol.kit import Kit, load_kit
from flare_protocol.preflight import check_kit

logger = logging.getLogger("flare_admin")


#: A fixed 4 MiB receive window instead of gRPC's BDP-probed one: with probing, a
#: download whose disk is slower than the network buffered ~70 MB more in the client
#: (peak RSS 158 MB for 1 GiB); fixed, RSS stays flat at the same throughput (measured).
RECEIVE_WINDOW: list[tuple[str, object]] = [
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", 4 * 1024 * 1024),
]
#: An admin's channel retries a lost server after 0.25 s, growing to 2 s at most (grpc's
#: default grows to 120 s): after a server restart the next call (or ``ping``) finds it.
#: Not ``min_reconnect_backoff_ms``: grpc also uses it as the connect timeout, and a TLS
#: handshake over a slow link needs more than a quarter second.
RECONNECT: list[tuple[str, object]] = [
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


@dataclass(frozen=True)
class Target:
    """A checked kit and everything needed to open a channel with it."""

    kit: Kit
    username: str
    address: str
    timeout: float
    credentials: grpc.ChannelCredentials
    options: list[tuple[str, object]]


def prepare(
    username: str,
    startup_kit_location: str | os.PathLike[str],
    timeout: float,
    server_address: str | None,
    debug: bool,
) -> Target:
    """Load and pre-flight the kit; no network call.

    Raises:
        InvalidArgumentError: a malformed argument.
        KitError (and subclasses), UsernameMismatch: the kit cannot be used.
    """
    if not isinstance(username, str) or not username:
        raise InvalidArgumentError(f"username must be a non-empty string, got {username!r}")
    timeout = timeout_value(timeout)
    if timeout == 0:
        raise InvalidArgumentError("timeout must be > 0 seconds")
    if server_address is not None and (
        not isinstance(server_address, str) or ":" not in server_address
    ):
        raise InvalidArgumentError(f"server_address must be 'host:port', got {server_address!r}")
    if debug:
        _enable_debug_logging()
    try:
        location = Path(startup_kit_location)
    except TypeError as exc:
        raise InvalidArgumentError(
            f"startup_kit_location must be a path, got {startup_kit_location!r}"
        ) from exc
    _malloc.tune_if_requested()  # a user's process: malloc is theirs unless they opt in
    kit = load_kit(location, ParticipantType.ADMIN)
    check_kit(kit, username=username)
    address = server_address or kit.server_address(kit.server.admin_port)
    try:
        creds = credentials.channel_credentials(kit)
    except OSError as exc:
        raise KitError(f"cannot read kit file {exc.filename}: {exc.strerror}") from exc
    return Target(
        kit=kit,
        username=username,
        address=address,
        timeout=timeout,
        credentials=creds,
        options=credentials.channel_options(kit, address) + RECEIVE_WINDOW + RECONNECT,
    )


def confirm_identity(target: Target, info: SessionInfo) -> None:
    """The server must see us as the kit's participant (guards against a confused proxy)."""
    if info.name != target.username:
        raise AuthenticationError(
            f"the server at {target.address} identified this session as {info.name!r}, "
            f"not {target.username!r}; the kit and the server disagree",
            username=target.username,
            server_name=info.name,
        )


def opened(target: Target, reply: Any) -> SessionInfo:
    """Who the server says we are, from the first call's (``Hello``) reply.

    Raises:
        AuthenticationError: the server sees someone else.
    """
    info = hello().parse(reply)
    confirm_identity(target, info)
    return info


def open_failed(target: Target, exc: grpc.RpcError, debug: bool) -> APIError:
    """The error of a failed first call (``debug``: logged with gRPC's own words)."""
    if debug:
        log_open_failure(target, exc)
    return map_rpc_error(exc, address=target.address, action="open session", opening=True)


def log_open_failure(target: Target, exc: grpc.RpcError) -> None:
    """``debug=True``: what gRPC itself said about a failed first call (the handshake
    details its C core would otherwise print on stderr; see flare_admin._quiet)."""
    try:
        detail = exc.debug_error_string()  # type: ignore[attr-defined]
    except Exception:
        detail = str(exc)
    logger.debug("opening a session at %s failed: %s", target.address, detail)


def _enable_debug_logging() -> None:
    logger.setLevel(logging.DEBUG)
    # Our own handler only when nothing else would show the records: an application that
    # configured logging (a handler here or on an ancestor, e.g. logging.basicConfig())
    # prints them itself, and a second handler would print every line twice.
    if not logger.hasHandlers():
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
        logger.addHandler(handler)
