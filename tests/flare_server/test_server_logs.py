"""Two servers in one process: each server.log (and error list) holds only its own records."""

from __future__ import annotations

from pathlib import Path

from tests.flare_server.test_server_identity import _hello
from tests.server_harness import ServerThread, wait_until


def _log(server: ServerThread) -> str:
    return (server.server.workspace / "logs" / "server.log").read_text()


def test_two_servers_in_one_process_do_not_write_into_each_others_log(
    provisioned, kits, tmp_path: Path
) -> None:
    kit = provisioned.kits["localhost"]
    with ServerThread(kit, tmp_path / "a") as a, ServerThread(kit, tmp_path / "b") as b:
        _hello(kits["site-1"], b.admin_address)  # refused: logged by b only
        wait_until(lambda: "rejected hello" in _log(b))
        log_a, log_b = _log(a), _log(b)
    assert f"workspace {tmp_path / 'a'}" in log_a and f"workspace {tmp_path / 'b'}" in log_b
    assert f"workspace {tmp_path / 'b'}" not in log_a
    assert f"workspace {tmp_path / 'a'}" not in log_b
    assert "rejected hello" not in log_a
