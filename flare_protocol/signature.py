"""Signed startup kits: the ``signature.json`` format and its one verification function.

Theory of operation. Provisioning hashes every file of a kit's ``startup/`` folder and
signs the list with the project's CA key. ``startup/signature.json`` holds::

    {
      "format": 1,
      "algorithm": "ecdsa-sha256",            # or "rsa-pss-sha256"
      "files": {"README.md": "<sha256 hex>", "client.crt": "...", "rootCA.pem": "...", ...},
      "signature": "<base64 signature>"
    }

The signature covers the canonical JSON (sorted keys, no spaces, UTF-8) of the object
without its ``signature`` member, so the algorithm and every file name and digest are
bound. :func:`verify_kit` checks, in order: ``startup/`` and ``signature.json`` are
regular (no symlinks), no file is there that is not listed, no listed file is missing,
every digest matches, ``rootCA.pem`` matches an expected fingerprint when one is given,
and the signature verifies with the public key of that ``rootCA.pem``.

Without a fingerprint, verification proves the kit is whole and self-consistent; it
cannot tell our CA from an attacker who re-signed everything with their own. Hand the
fingerprint that ``flare provision`` prints to each participant out of band and pass it
(``flare kit verify KIT --ca-fingerprint ...``) to close that gap.

The ``local/`` and ``transfer/`` folders are not signed: they hold what a participant
may edit or receive.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from flare_protocol.errors import KitIncomplete, KitTampered
from flare_protocol.kit import ROOT_CA, SIGNATURE, STARTUP

__all__ = [
    "SIGNATURE_FORMAT",
    "ca_fingerprint",
    "normalize_fingerprint",
    "sign_files",
    "verify_kit",
]

SIGNATURE_FORMAT = 1

_ALG_EC = "ecdsa-sha256"
_ALG_RSA = "rsa-pss-sha256"
_MAX_SIGNATURE_JSON = 1024 * 1024
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def ca_fingerprint(pem_bytes: bytes) -> str:
    """SHA-256 fingerprint of a PEM certificate's DER, as ``AB:CD:...`` (64 hex digits).

    The same string ``openssl x509 -noout -fingerprint -sha256 -in rootCA.pem`` prints.
    """
    cert = x509.load_pem_x509_certificate(pem_bytes)
    digest = cert.fingerprint(hashes.SHA256()).hex().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def normalize_fingerprint(text: str) -> str:
    """A fingerprint as 64 lower-case hex digits; colons, spaces and case are ignored.

    Accepts what :func:`ca_fingerprint` or ``openssl ... -fingerprint -sha256`` print,
    with or without a ``SHA256:`` / ``sha256 Fingerprint=`` prefix.

    Raises:
        ValueError: the text is not a SHA-256 fingerprint.
    """
    value = text.strip()
    if "=" in value:
        value = value.split("=", 1)[1]
    lowered = value.lower()
    if lowered.startswith("sha256:"):
        value = value[len("sha256:") :]
    cleaned = "".join(ch for ch in value if ch not in ": \t").lower()
    if len(cleaned) != 64 or any(ch not in "0123456789abcdef" for ch in cleaned):
        raise ValueError(
            f"{text!r} is not a SHA-256 fingerprint (expected 64 hex digits, colons optional)"
        )
    return cleaned


def _canonical(manifest: Mapping[str, Any]) -> bytes:
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign_files(files: Mapping[str, bytes], ca_key: Any) -> bytes:
    """The ``signature.json`` bytes for a ``startup/`` folder holding exactly ``files``.

    Args:
        files: file name -> content, for every file of ``startup/`` except signature.json.
        ca_key: the project CA's private key (EC or RSA).
    """
    if isinstance(ca_key, ec.EllipticCurvePrivateKey):
        algorithm = _ALG_EC
    elif isinstance(ca_key, rsa.RSAPrivateKey):
        algorithm = _ALG_RSA
    else:
        raise TypeError(f"unsupported CA key type {type(ca_key).__name__}")
    manifest: dict[str, Any] = {
        "format": SIGNATURE_FORMAT,
        "algorithm": algorithm,
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())},
    }
    message = _canonical(manifest)
    if algorithm == _ALG_EC:
        sig = ca_key.sign(message, ec.ECDSA(hashes.SHA256()))
    else:
        sig = ca_key.sign(message, _pss(), hashes.SHA256())
    manifest["signature"] = base64.b64encode(sig).decode("ascii")
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)


def _read_regular(path: Path, limit: int | None = None) -> bytes:
    """Read a file that must be a regular file, never through a symlink."""
    try:
        # O_NONBLOCK: a FIFO swapped in after the listing must not hang start-up.
        fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise KitTampered(f"{path}: signed file was removed", path=str(path)) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise KitTampered(
                f"{path}: is a symlink; kit files must be regular files", path=str(path)
            ) from None
        raise KitTampered(f"{path}: cannot be read: {exc.strerror}", path=str(path)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KitTampered(f"{path}: is not a regular file", path=str(path))
        if limit is not None and st.st_size > limit:
            raise KitTampered(f"{path}: is too large ({st.st_size} bytes)", path=str(path))
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _load_manifest(sig_path: Path) -> tuple[dict[str, Any], dict[str, str], bytes]:
    raw = _read_regular(sig_path, _MAX_SIGNATURE_JSON)

    def bad(why: str) -> KitTampered:
        return KitTampered(f"{sig_path}: {why}", path=str(sig_path))

    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        # ValueError: not UTF-8 or not JSON, or an integer of more digits than Python
        # converts; RecursionError: nested deeper than the parser's stack.
        raise bad(f"is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or set(doc) != {"format", "algorithm", "files", "signature"}:
        raise bad("does not have the signature.json format 1 members")
    if doc["format"] != SIGNATURE_FORMAT:
        raise bad(f"unsupported signature format {doc['format']!r}")
    files = doc["files"]
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in files.items()
    ):
        raise bad("'files' must map file names to SHA-256 hex digests")
    for name in files:
        if name in ("", ".", "..", SIGNATURE) or "/" in name or "\\" in name or "\0" in name:
            raise bad(f"lists an invalid file name {name!r}")
    try:
        signature = base64.b64decode(doc["signature"], validate=True)
    except (TypeError, ValueError):
        raise bad("'signature' is not base64") from None
    manifest = {k: doc[k] for k in ("format", "algorithm", "files")}
    return manifest, files, signature


def verify_kit(kit_dir: str | Path, ca_fingerprint: str | None = None) -> None:
    """Check that a kit's ``startup/`` folder is exactly what the project CA signed.

    Args:
        kit_dir: the participant's kit folder (the one holding ``startup/``).
        ca_fingerprint: the root CA's SHA-256 fingerprint, received out of band
            (any format :func:`normalize_fingerprint` accepts).

    Raises:
        KitIncomplete: ``kit_dir`` has no ``startup/`` folder.
        KitTampered: a file was edited, added, removed or replaced by a symlink,
            ``startup/`` or ``signature.json`` is a symlink, the signature does not
            verify, or ``rootCA.pem`` does not match ``ca_fingerprint``. ``.path``
            names the file.
        ValueError: ``ca_fingerprint`` is not a fingerprint.
    """
    expected_fp = normalize_fingerprint(ca_fingerprint) if ca_fingerprint is not None else None
    startup = Path(kit_dir) / STARTUP
    try:
        st = os.lstat(startup)
    except FileNotFoundError:
        raise KitIncomplete(
            f"{kit_dir} is not a startup kit: it has no {STARTUP}/ folder", path=str(startup)
        ) from None
    if stat.S_ISLNK(st.st_mode):
        raise KitTampered(
            f"{startup}: is a symlink; the signed folder must be a real folder", path=str(startup)
        )
    if not stat.S_ISDIR(st.st_mode):
        raise KitTampered(f"{startup}: is not a folder", path=str(startup))

    manifest, files, signature = _load_manifest(startup / SIGNATURE)

    with os.scandir(startup) as entries:
        present = {}
        for entry in entries:
            if entry.name == SIGNATURE:
                continue
            path = startup / entry.name
            if entry.is_symlink():
                raise KitTampered(
                    f"{path}: is a symlink; kit files must be regular files", path=str(path)
                )
            if entry.name not in files:
                raise KitTampered(f"{path}: was added after the kit was signed", path=str(path))
            if not entry.is_file(follow_symlinks=False):
                raise KitTampered(f"{path}: is not a regular file", path=str(path))
            present[entry.name] = entry
    for name in sorted(files):
        if name not in present:
            path = startup / name
            raise KitTampered(f"{path}: signed file was removed", path=str(path))

    root_pem = b""
    for name, digest in sorted(files.items()):
        path = startup / name
        data = _read_regular(path)
        if hashlib.sha256(data).hexdigest() != digest.lower():
            raise KitTampered(f"{path}: was edited after the kit was signed", path=str(path))
        if name == ROOT_CA:
            root_pem = data

    root_path = startup / ROOT_CA
    if ROOT_CA not in files:
        raise KitTampered(
            f"{root_path}: the root CA is not among the signed files", path=str(root_path)
        )
    try:
        root = x509.load_pem_x509_certificate(root_pem)
    except ValueError:
        raise KitTampered(f"{root_path}: is not a PEM certificate", path=str(root_path)) from None
    if expected_fp is not None:
        actual = root.fingerprint(hashes.SHA256()).hex()
        if actual != expected_fp:
            raise KitTampered(
                f"{root_path}: root CA fingerprint {_colon(actual)} does not match the expected "
                f"{_colon(expected_fp)}; this kit was not issued by your project's CA",
                path=str(root_path),
            )
    _check_signature(startup / SIGNATURE, root, manifest, signature)


def _colon(hexdigest: str) -> str:
    up = hexdigest.upper()
    return ":".join(up[i : i + 2] for i in range(0, len(up), 2))


def _check_signature(
    sig_path: Path, root: x509.Certificate, manifest: dict[str, Any], signature: bytes
) -> None:
    message = _canonical(manifest)
    key = root.public_key()
    try:
        if manifest["algorithm"] == _ALG_EC and isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        elif manifest["algorithm"] == _ALG_RSA and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, message, _pss(), hashes.SHA256())
        else:
            raise InvalidSignature
    except InvalidSignature:
        raise KitTampered(
            f"{sig_path}: signature does not verify with the kit's root CA",
            path=str(sig_path),
        ) from None
