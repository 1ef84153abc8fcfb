"""``ClientApp``: Flower's site-side app, on top of the Client API's messages.

::

    import flare_site.client as flare
    from flare_site.client import ClientApp, Message, Context, RecordSet, MetricsRecord

    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        arrays = msg.content.parameters_records["arrays"]
        ...
        return Message(RecordSet({...}), reply_to=msg)

    if __name__ == "__main__":
        app.run()          # until the job is over

``@app.train()``, ``@app.evaluate()`` and ``@app.query()`` register a handler for that
message type; ``@app.train("fedprox")`` one for ``"train.fedprox"``. A handler takes the
message and a :class:`~flare_protocol.records.Context` and returns the reply (a
``Message``, or just its RecordSet). An exception in a handler becomes an error reply
(``ErrorCode.CLIENT_APP_RAISED_EXCEPTION`` with the traceback) and the app goes on. The
same app serves a job of a built-in workflow too: its tasks arrive as ``train`` and
``evaluate`` messages (see :func:`flare_site.client.receive_message`).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

from flare_protocol.errors import FlareError
from flare_protocol.message import Error, ErrorCode, Message, MessageType, node_id
from flare_protocol.records import Context, RecordSet
from flare_site.client import _api

__all__ = ["ClientApp", "Handler"]

#: A handler: (message, context) -> the reply (a Message, or its content).
Handler = Callable[[Message, Context], "Message | RecordSet"]


class ClientApp:
    """Message handlers by message type, and the loop that runs them (see the module)."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def _register(self, kind: str, action: str | None) -> Callable[[Handler], Handler]:
        name = kind if not action else f"{kind}.{action}"

        def decorator(fn: Handler) -> Handler:
            if name in self._handlers:
                raise FlareError(f"a handler for {name!r} messages is already registered")
            self._handlers[name] = fn
            return fn

        return decorator

    def train(self, action: str | None = None) -> Callable[[Handler], Handler]:
        """Register the handler of ``train`` (or ``train.<action>``) messages."""
        return self._register(MessageType.TRAIN, action)

    def evaluate(self, action: str | None = None) -> Callable[[Handler], Handler]:
        """Register the handler of ``evaluate`` (or ``evaluate.<action>``) messages."""
        return self._register(MessageType.EVALUATE, action)

    def query(self, action: str | None = None) -> Callable[[Handler], Handler]:
        """Register the handler of ``query`` (or ``query.<action>``) messages."""
        return self._register(MessageType.QUERY, action)

    def __call__(self, message: Message, context: Context) -> Message:
        """The reply of the handler registered for ``message``'s type.

        Raises:
            FlareError: no handler is registered for that type; whatever the handler raises.
        """
        kind = message.metadata.message_type
        handler = self._handlers.get(kind)
        if handler is None:
            known = ", ".join(sorted(self._handlers)) or "none"
            raise FlareError(
                f"this ClientApp has no handler for {kind!r} messages (registered: {known}); "
                f"add one with @app.{kind.split('.')[0]}()"
            )
        reply = handler(message, context)
        if isinstance(reply, RecordSet):
            return message.create_reply(reply)
        if not isinstance(reply, Message):
            raise FlareError(
                f"the {kind!r} handler returned a {type(reply).__name__}; return a Message "
                "(Message(content, reply_to=msg)) or a RecordSet"
            )
        return reply

    def run(self, *, node_config: dict[str, Any] | None = None) -> None:
        """Answer messages until the job is over (connects first, as ``flare.init()``).

        ``context.node_config`` holds ``site-name`` plus ``node_config``; ``context.state``
        lives as long as the script.
        """
        _api.init()
        site = _api.get_site_name()
        context = Context(
            run_id=_api.get_job_id(),
            node_id=node_id(site) if site else 0,
            node_config={"site-name": site, **(node_config or {})},
        )
        while (message := _api.receive_message()) is not None:
            try:
                reply: Message | Error = self(message, context)
            except Exception:
                reply = Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, traceback.format_exc()[-8000:])
            _api.send_reply(reply)
