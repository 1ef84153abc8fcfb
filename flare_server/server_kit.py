"""The server's startup kit: loaded, then checked before anything listens."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography import x509

from flare_protocol import errors
from flare_protocol.identity import ParticipantType, identity_from_certificate
from flare_protocol.kit import Kit, load_kit

__all__ = ["check_server_kit", "load_server_kit"]


def check_server_kit(kit: Kit) -> x509.Certificate:
    """Refuse a server kit that is tampered, has a loose key or a wrong certificate.

    Raises:
        KitError (a subclass naming the file and the fix).
    """
    from flare_protocol.signature import verify_kit

    verify_kit(kit.root)
    key = kit.key_path
    try:
        mode = stat.S_IMODE(os.stat(key).st_mode)
    except FileNotFoundError:
        raise errors.KitIncomplete(f"missing server key {key}", path=str(key)) from None
    if mode & 0o077:
        raise errors.KeyFilePermissions(
            f"{key} is readable by group or others (mode {mode:04o}); run: chmod 600 {key}",
            path=str(key),
        )
    try:
        from flare_protocol.preflight import check_kit
    except ImportError:  # pragma: no cover - pre-flight lands with the Session
        cert = x509.load_pem_x509_certificate(kit.cert_path.read_bytes())
    else:
        cert = check_kit(kit)
    try:
        identity_from_certificate(cert, ParticipantType.SERVER)
    except errors.IdentityRejected as exc:
        raise errors.KitError(
            f"{kit.cert_path} is not a usable server certificate: {exc.message}",
            path=str(kit.cert_path),
        ) from None
    return cert


def load_server_kit(kit_dir: str | Path) -> Kit:
    """Load a server kit (config only; :func:`check_server_kit` does the checks)."""
    return load_kit(kit_dir, ParticipantType.SERVER)
