"""The server's lifecycle: one table of legal moves, checked in one place.

The table is tested without a server; then a real server walks it: NEW, SERVING, STOPPED,
and a start that fails half-way stops what it had started.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flare_protocol.errors import FlareError, InvalidTransition
from flare_server.app import Server
from flare_server.jobs import JobStore
from flare_server.server_state import TRANSITIONS, ServerState, check_server_transition
from tests.server_harness import ServerThread

S = ServerState


def test_every_state_is_reachable_from_new_and_stopped_is_terminal() -> None:
    seen, todo = {S.NEW}, [S.NEW]
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(S)
    assert TRANSITIONS[S.STOPPED] == frozenset()
    assert set(TRANSITIONS) == set(S)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (S.NEW, S.STARTING),
        (S.NEW, S.STOPPED),
        (S.STARTING, S.SERVING),
        (S.STARTING, S.STOPPING),
        (S.SERVING, S.STOPPING),
        (S.STOPPING, S.STOPPED),
    ],
)
def test_the_legal_moves(old: ServerState, new: ServerState) -> None:
    assert check_server_transition(old, new) is new


@pytest.mark.parametrize(
    ("old", "new"),
    [(S.SERVING, S.STARTING), (S.STOPPED, S.STARTING), (S.NEW, S.SERVING), (S.STOPPING, S.SERVING)],
)
def test_an_illegal_move_names_both_states(old: ServerState, new: ServerState) -> None:
    with pytest.raises(InvalidTransition, match=f"from {old.value} to {new.value}") as info:
        check_server_transition(old, new)
    assert (info.value.old, info.value.new) == (old.value, new.value)


def test_a_server_walks_new_serving_stopped_and_is_not_started_twice(
    server_kit: Path, tmp_path: Path
) -> None:
    srv = ServerThread(server_kit, tmp_path / "ws")
    try:
        srv.start()
        assert srv.server.state is S.SERVING
        with pytest.raises(InvalidTransition, match="from SERVING to STARTING"):
            srv.call(srv.server.start())
        assert srv.server.state is S.SERVING
        srv.call(srv.server.stop())
        assert srv.server.state is S.STOPPED
        srv.call(srv.server.stop())  # idempotent
        assert srv.server.state is S.STOPPED
    finally:
        srv.stop()


async def test_a_server_that_never_started_stops_at_once(server_kit: Path, tmp_path: Path) -> None:
    from flare_server.server_kit import load_server_kit

    server = Server(load_server_kit(server_kit))
    assert server.state is S.NEW
    await server.stop()
    assert server.state is S.STOPPED
    with pytest.raises(InvalidTransition):
        await server.start()


def test_a_failed_start_stops_what_it_started(
    server: ServerThread, server_kit: Path, tmp_path: Path
) -> None:
    clash = ServerThread(server_kit, tmp_path / "ws2", admin_port=server.server.admin_port)
    try:
        with pytest.raises(FlareError, match="cannot listen"):
            clash.start()
        assert clash.server.state is S.STOPPED
    finally:
        clash.stop()
    JobStore.open(tmp_path / "ws2" / "jobs").close()  # the store was closed again
