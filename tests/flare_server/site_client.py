"""A minimal site for tests: Register, then a Channel that sends heartbeats (raw stubs)."""

from __future__ import annotations

import json
import queue
import threading
from pathlib import Path
from typing import Any

import grpc

from flare_protocol._generated import site_pb2
from tests.server_harness import site_stub

_STOP = object()


class FakeSite:
    """Registers with a real server and keeps a Channel open until ``close()``."""

    def __init__(
        self, kit: Path, address: str, *, heartbeat: float = 0.1, answer_commands: bool = True
    ) -> None:
        self.stub, self.channel = site_stub(kit, address)
        self.heartbeat = heartbeat
        self.answer_commands = answer_commands
        self.outbox: queue.Queue[Any] = queue.Queue()
        self.received: list[site_pb2.ServerMessage] = []
        self.acks = 0
        self.ended: grpc.RpcError | None | bool = False
        self._stop = threading.Event()
        self._beat = True
        #: Jobs the heartbeats say this site runs.
        self.heartbeat_jobs: tuple[str, ...] = ()

    def register(
        self, running_jobs: tuple[str, ...] = (), resources: dict[str, str] | None = None
    ) -> site_pb2.RegisterReply:
        self.reply = self.stub.Register(
            site_pb2.RegisterRequest(
                site_version="test", running_jobs=list(running_jobs), resources=resources or {}
            ),
            timeout=5,
        )
        return self.reply

    def open(
        self, running_jobs: tuple[str, ...] = (), resources: dict[str, str] | None = None
    ) -> FakeSite:
        self.register(running_jobs, resources)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._beater = threading.Thread(target=self._beat_loop, daemon=True)
        self._reader.start()
        self._beater.start()
        return self

    def stop_heartbeats(self) -> None:
        self._beat = False

    def _requests(self):
        while True:
            item = self.outbox.get()
            if item is _STOP:
                return
            yield item

    def _beat_loop(self) -> None:
        while not self._stop.is_set():
            if self._beat:
                self.outbox.put(
                    site_pb2.SiteMessage(
                        heartbeat=site_pb2.Heartbeat(
                            session_id=self.reply.session_id, running_jobs=self.heartbeat_jobs
                        )
                    )
                )
            self._stop.wait(self.heartbeat)

    def _read(self) -> None:
        try:
            for msg in self.stub.Channel(self._requests()):
                self.received.append(msg)
                if msg.WhichOneof("kind") == "heartbeat_ack":
                    self.acks += 1
                elif self.answer_commands and msg.message.topic == "site.command":
                    body = json.loads(msg.message.body_json)
                    self.outbox.put(
                        site_pb2.SiteMessage(
                            message=site_pb2.Envelope(
                                topic="site.reply",
                                reply_to=msg.message.message_id,
                                body_json=json.dumps({"result": {"echo": body["command"]}}),
                            )
                        )
                    )
            self.ended = None
        except grpc.RpcError as exc:
            self.ended = exc

    def close(self) -> None:
        self._stop.set()
        self.outbox.put(_STOP)
        self.channel.close()

    def __enter__(self) -> FakeSite:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
