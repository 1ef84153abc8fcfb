"""Keep gRPC's C core off the user's terminal unless asked.

gRPC's C core logs to the process's stderr by itself (for example ``I1202 ...
ssl_transport_security.cc:2563] Handshake failed ...`` before our own ``NoConnection``
says the same thing clearly). Its level comes from the ``GRPC_VERBOSITY`` environment
variable, read once, when ``grpc`` is first imported; nothing can change it afterwards
(measured with grpcio 1.85). So :func:`quiet_grpc_core` imports ``grpc`` with
``GRPC_VERBOSITY=NONE`` and then restores the environment, so child processes do not
inherit the setting. It does nothing when the user set ``GRPC_VERBOSITY`` (their choice
wins: ``GRPC_VERBOSITY=INFO`` shows everything) or when ``grpc`` was imported already.
Importing this module runs it; ``flare_admin/__init__.py`` imports it first.
"""

from __future__ import annotations

import os
import sys

__all__ = ["quiet_grpc_core"]

VARIABLE = "GRPC_VERBOSITY"


def quiet_grpc_core() -> bool:
    """Import ``grpc`` with its C-core logging off; True when this call silenced it."""
    if "grpc" in sys.modules or VARIABLE in os.environ:
        return False
    os.environ[VARIABLE] = "NONE"
    try:
        import grpc  # noqa: F401
    finally:
        os.environ.pop(VARIABLE, None)
    return True


quiet_grpc_core()
