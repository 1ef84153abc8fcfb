"""Bad startup kits for the security matrix, made honestly.

Every function takes a provisioned project (a :class:`~provisioning.ProvisionResult`,
whose ``state_dir`` reaches the CA key), copies one participant's kit to ``dest`` and
changes exactly one thing. Certificates come from the same builder provisioning uses
(:func:`provisioning.certs.issue_leaf`) with its keyword overrides, keep the kit's own
key, and are signed by the project CA unless the point is another CA. The copy's
``startup/`` is re-signed with the project CA, so :func:`flare_protocol.signature.verify_kit`
still passes and the defect shows up only where it should (pre-flight, handshake, the
server's identity check).

The originals are never modified: the session's ``provisioned`` project stays usable.

Example::

    kit = expired_kit(provisioned, "site-1", tmp_path)
    with pytest.raises(CertificateExpired):
        check_kit(load_kit(kit))
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from flare_protocol.identity import ParticipantType, Role
from flare_protocol.kit import SIGNATURE, STARTUP, load_kit
from flare_protocol.signature import sign_files
from provisioning import ProvisionResult, provision
from provisioning.certs import CertificateAuthority, create_ca, generate_key, issue_leaf, key_pem
from provisioning.state import load_ca

__all__ = [
    "ca_leaf_kit",
    "copy_kit",
    "eku_kit",
    "expired_kit",
    "foreign_ca_kit",
    "foreign_project",
    "loose_key_kit",
    "mismatched_key_kit",
    "no_eku_kit",
    "not_yet_valid_kit",
    "project_ca",
    "reissued_kit",
    "resign_kit",
    "revoke_participant",
    "server_auth_only_kit",
    "sub_ca_kit",
    "tampered_extensions_kit",
    "wrong_type_kit",
]


def project_ca(result: ProvisionResult, passphrase: bytes | None = None) -> CertificateAuthority:
    """The project's CA (key and certificate) from the result's state folder."""
    return load_ca(result.state_dir, passphrase)


def copy_kit(result: ProvisionResult, name: str, dest: Path) -> Path:
    """A faithful copy of ``name``'s kit at ``dest/<name>`` (modes kept, folders 0700)."""
    target = Path(dest) / name
    shutil.copytree(result.kits[name], target, symlinks=True)
    for root, dirs, _files in os.walk(target):
        os.chmod(root, 0o700)
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o700)
    return target


def resign_kit(kit_dir: Path, ca: CertificateAuthority) -> None:
    """Re-sign a kit's ``startup/`` as it is now, with ``ca``'s key."""
    startup = Path(kit_dir) / STARTUP
    files = {p.name: p.read_bytes() for p in startup.iterdir() if p.name != SIGNATURE}
    sig = startup / SIGNATURE
    sig.unlink()
    sig.write_bytes(sign_files(files, ca.key))


def reissued_kit(
    result: ProvisionResult,
    name: str,
    dest: Path,
    *,
    issuer: CertificateAuthority | None = None,
    participant_type: ParticipantType | None = None,
    role: Role | None = None,
    **overrides: Any,
) -> Path:
    """A copy of ``name``'s kit whose certificate is re-issued with builder overrides.

    Args:
        issuer: the CA that signs the certificate (default: the project CA).
        participant_type, role: bind another type (and role) than the kit's.
        overrides: passed to :func:`provisioning.certs.issue_leaf` (``not_before``,
            ``not_after``, ``is_ca``, ``eku``, ``days``, ``now``, ``serial`` ...).
    """
    kit_dir = copy_kit(result, name, dest)
    kit = load_kit(kit_dir)
    cert = x509.load_pem_x509_certificate(kit.cert_path.read_bytes())
    ptype = participant_type or kit.type
    if participant_type is None:
        role = kit.role
    elif ptype is ParticipantType.ADMIN and role is None:
        role = Role.MEMBER
    host_names = kit.server.host_names if ptype is ParticipantType.SERVER else ()
    new = issue_leaf(
        issuer or project_ca(result),
        cert.public_key(),  # type: ignore[arg-type]
        name=kit.name,
        org=kit.org,
        participant_type=ptype,
        role=role if ptype is ParticipantType.ADMIN else None,
        host_names=host_names,
        **overrides,
    )
    kit.cert_path.write_bytes(new.public_bytes(serialization.Encoding.PEM))
    resign_kit(kit_dir, project_ca(result))
    return kit_dir


def _now() -> datetime:
    return datetime.now(timezone.utc)


def expired_kit(result: ProvisionResult, name: str, dest: Path) -> Path:
    """Certificate valid from 30 days ago until yesterday."""
    now = _now()
    return reissued_kit(
        result, name, dest, not_before=now - timedelta(days=30), not_after=now - timedelta(days=1)
    )


def not_yet_valid_kit(result: ProvisionResult, name: str, dest: Path) -> Path:
    """Certificate valid from tomorrow for 30 days."""
    now = _now()
    return reissued_kit(
        result, name, dest, not_before=now + timedelta(days=1), not_after=now + timedelta(days=31)
    )


def ca_leaf_kit(result: ProvisionResult, name: str, dest: Path) -> Path:
    """Certificate with basicConstraints CA:TRUE (otherwise like the original)."""
    return reissued_kit(result, name, dest, is_ca=True)


def no_eku_kit(result: ProvisionResult, name: str, dest: Path) -> Path:
    """Certificate without an extended key usage extension."""
    return reissued_kit(result, name, dest, eku=None)


def server_auth_only_kit(result: ProvisionResult, name: str, dest: Path) -> Path:
    """A site or admin certificate whose only extended key usage is serverAuth."""
    return reissued_kit(result, name, dest, eku=[ExtendedKeyUsageOID.SERVER_AUTH])


def eku_kit(
    result: ProvisionResult, name: str, dest: Path, eku: Sequence[x509.ObjectIdentifier]
) -> Path:
    """Certificate with exactly the given extended key usages."""
    return reissued_kit(result, name, dest, eku=list(eku))


def foreign_ca_kit(result: ProvisionResult, name: str, dest: Path) -> Path:
    """Certificate issued by another project's CA; the kit keeps OUR root CA.

    The holder still trusts our server, so the handshake reaches the server, which
    must refuse the client certificate; pre-flight reports it as not issued by the
    kit's root CA. For a kit that is entirely another project's, use
    :func:`foreign_project`.
    """
    other = create_ca(f"foreign-{result.project}")
    return reissued_kit(result, name, dest, issuer=other)


def wrong_type_kit(
    result: ProvisionResult,
    name: str,
    dest: Path,
    participant_type: ParticipantType = ParticipantType.SITE,
    role: Role | None = None,
) -> Path:
    """A kit holding a certificate of another participant type than the kit itself.

    E.g. ``wrong_type_kit(p, "admin@org_a.com", tmp)`` is an admin kit (fed_admin.json)
    with a site certificate for the same name; an admin type defaults to role member.
    """
    return reissued_kit(result, name, dest, participant_type=participant_type, role=role)


def loose_key_kit(result: ProvisionResult, name: str, dest: Path, mode: int = 0o644) -> Path:
    """The kit with its private key file chmod-ed to ``mode`` (default 0644)."""
    kit_dir = copy_kit(result, name, dest)
    os.chmod(load_kit(kit_dir).key_path, mode)
    return kit_dir


def mismatched_key_kit(result: ProvisionResult, name: str, dest: Path) -> Path:
    """The kit with a fresh private key that does not belong to its certificate."""
    kit_dir = copy_kit(result, name, dest)
    kit = load_kit(kit_dir)
    cert = x509.load_pem_x509_certificate(kit.cert_path.read_bytes())
    key_type = "rsa-2048" if isinstance(cert.public_key(), rsa.RSAPublicKey) else "ec-p256"
    kit.key_path.unlink()
    fd = os.open(kit.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_pem(generate_key(key_type)))
    resign_kit(kit_dir, project_ca(result))
    return kit_dir


def _project_doc(result: ProvisionResult) -> dict[str, Any]:
    """project.yml of the result, rebuilt from its kits (the original path is not kept)."""
    participants: list[dict[str, Any]] = []
    for kit_dir in result.kits.values():
        kit = load_kit(kit_dir)
        entry: dict[str, Any] = {
            "name": kit.name,
            "type": "client" if kit.type is ParticipantType.SITE else kit.type.value,
            "org": kit.org,
        }
        if kit.role is not None:
            entry["role"] = kit.role.value
        if kit.type is ParticipantType.SERVER:
            entry.update(
                fed_learn_port=kit.server.fed_learn_port,
                admin_port=kit.server.admin_port,
                host_names=list(kit.server.host_names),
            )
        participants.append(entry)
    return {"api_version": 3, "name": result.project, "participants": participants}


def foreign_project(
    result: ProvisionResult, dest: Path, name: str | None = None
) -> ProvisionResult:
    """The same participants provisioned as another project, with its own CA.

    Its kits are whole and validly signed, by a CA our project does not trust.
    """
    doc = _project_doc(result)
    doc["name"] = name or f"{result.project}_foreign"
    project_file = Path(dest) / f"{doc['name']}.yml"
    project_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    return provision(project_file, Path(dest) / "workspace")


def revoke_participant(
    result: ProvisionResult,
    name: str,
    *,
    remove: bool = False,
    project_file: Path | None = None,
) -> ProvisionResult:
    """Re-provision the project so that ``name``'s current certificate is revoked.

    By default the participant stays in the project and gets a new key and certificate
    (``provision(..., revoke=[name])``); with ``remove=True`` it is dropped from the
    project instead. Either way the new server kit's ``revoked.json`` lists the old
    serial, and ``result.kits[name]`` (the old kit) now holds a revoked certificate.
    The original kits are untouched; the new ones are in the returned result's prod_dir.

    Note: this writes a new prod_NN in the result's workspace. Use it on a project of
    your own (e.g. ``foreign_project`` or a fresh ``provision``), not on the shared
    session fixture if other tests need its server kit unchanged (they are not affected:
    their kits live in the old prod_NN).
    """
    doc = _project_doc(result)
    if remove:
        doc["participants"] = [p for p in doc["participants"] if p["name"] != name]
    if project_file is None:
        project_file = result.state_dir.parent / f".{result.project}-revoke.yml"
    project_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    return provision(project_file, result.state_dir.parent.parent, revoke=() if remove else [name])


def sub_ca_kit(result: ProvisionResult, name: str, dest: Path) -> Path:
    """A leaf with the kit's identity, issued by a CA:TRUE sub-CA that the project CA signed.

    ``client.crt`` holds the leaf followed by the sub-CA: the chain a client presents. The
    project root has path length 0, so no verifier should accept it (``openssl verify``
    does not).
    """
    ca = project_ca(result)
    key = generate_key("ec-p256")
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, f"{result.project} intermediate CA"),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, result.project),
                ]
            )
        )
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            ),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    sub = CertificateAuthority(key=key, cert=cert)
    kit_dir = reissued_kit(result, name, dest, issuer=sub)
    kit = load_kit(kit_dir)
    kit.cert_path.write_bytes(kit.cert_path.read_bytes() + sub.cert_pem)
    resign_kit(kit_dir, ca)
    return kit_dir


def tampered_extensions_kit(
    result: ProvisionResult,
    name: str,
    dest: Path,
    *,
    values: Mapping[x509.ObjectIdentifier, bytes] | None = None,
    duplicate: x509.ObjectIdentifier | None = None,
    drop: Sequence[x509.ObjectIdentifier] = (),
    subject: x509.Name | None = None,
) -> Path:
    """The kit's certificate with hand-made extensions, signed by the project CA.

    Args:
        values: raw DER values that replace (or add) the extensions of these OIDs, e.g.
            ``{OID_ADMIN_ROLE: b"\\x0c\\x02\\xff\\xfe"}`` (a UTF8String that is not UTF-8).
        duplicate: an OID whose extension appears twice (RFC 5280 forbids it; the
            ``cryptography`` builder refuses it, so the DER is patched and re-signed).
        drop: OIDs whose extensions are left out.
        subject: another subject name than the kit certificate's.
    """
    kit_dir = copy_kit(result, name, dest)
    kit = load_kit(kit_dir)
    old = x509.load_pem_x509_certificate(kit.cert_path.read_bytes())
    values = dict(values or {})
    extensions: list[x509.Extension[x509.ExtensionType]] = []
    for ext in old.extensions:
        if ext.oid in drop:
            continue
        raw = values.pop(ext.oid, None)
        value = ext.value if raw is None else x509.UnrecognizedExtension(ext.oid, raw)
        extensions.append(x509.Extension(ext.oid, ext.critical, value))
    for oid, raw in values.items():
        extensions.append(x509.Extension(oid, False, x509.UnrecognizedExtension(oid, raw)))
    stand_in: x509.ObjectIdentifier | None = None
    if duplicate is not None:
        twin = next(e for e in extensions if e.oid == duplicate)
        stand_in = _same_length_oid(duplicate, {e.oid for e in extensions})
        extensions.append(x509.Extension(stand_in, twin.critical, _raw_value(old, twin)))
    builder = x509.CertificateBuilder(
        issuer_name=old.issuer,
        subject_name=subject or old.subject,
        public_key=old.public_key(),
        serial_number=x509.random_serial_number(),
        not_valid_before=old.not_valid_before_utc,
        not_valid_after=old.not_valid_after_utc,
        extensions=extensions,
    )
    ca = project_ca(result)
    der = builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    if stand_in is not None and duplicate is not None:
        der = _resigned(der, _der_oid(stand_in), _der_oid(duplicate), ca)
    body = base64.encodebytes(der).decode().replace("\n", "")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    pem = "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"
    kit.cert_path.write_text(pem)
    resign_kit(kit_dir, ca)
    return kit_dir


def _raw_value(cert: x509.Certificate, ext: x509.Extension[Any]) -> x509.UnrecognizedExtension:
    """An extension's value as the DER ``cryptography`` would write for it."""
    if isinstance(ext.value, x509.UnrecognizedExtension):
        return x509.UnrecognizedExtension(ext.oid, ext.value.value)
    return x509.UnrecognizedExtension(ext.oid, ext.value.public_bytes())


def _same_length_oid(
    oid: x509.ObjectIdentifier, taken: set[x509.ObjectIdentifier]
) -> x509.ObjectIdentifier:
    """An unused OID whose DER encoding is as long as ``oid``'s (its last arc changed)."""
    head, last = oid.dotted_string.rsplit(".", 1)
    assert int(last) < 128, "only OIDs whose last arc is one byte long"
    for arc in range(127, 0, -1):
        candidate = x509.ObjectIdentifier(f"{head}.{arc}")
        if candidate not in taken and candidate != oid:
            return candidate
    raise AssertionError("no free arc")


def _der_oid(oid: x509.ObjectIdentifier) -> bytes:
    arcs = [int(a) for a in oid.dotted_string.split(".")]
    body = bytearray()
    for value in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [value & 0x7F]
        value >>= 7
        while value:
            chunk.append(0x80 | (value & 0x7F))
            value >>= 7
        body += bytes(reversed(chunk))
    return bytes([0x06, len(body)]) + bytes(body)


def _der_tlv(data: bytes, pos: int) -> tuple[int, int]:
    """(start of the content, end of the element) of the DER element at ``pos``."""
    first = data[pos + 1]
    if first < 0x80:
        return pos + 2, pos + 2 + first
    width = first & 0x7F
    length = int.from_bytes(data[pos + 2 : pos + 2 + width], "big")
    return pos + 2 + width, pos + 2 + width + length


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _resigned(der: bytes, old: bytes, new: bytes, ca: CertificateAuthority) -> bytes:
    """The certificate ``der`` with ``old`` replaced by ``new`` in its TBS, signed again."""
    tbs_start, _ = _der_tlv(der, 0)
    _, tbs_end = _der_tlv(der, tbs_start)
    _, alg_end = _der_tlv(der, tbs_end)
    tbs = der[tbs_start:tbs_end]
    assert tbs.count(old) == 1 and len(old) == len(new)
    tbs = tbs.replace(old, new)
    if isinstance(ca.key, rsa.RSAPrivateKey):
        signature = ca.key.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
    else:
        assert isinstance(ca.key, ec.EllipticCurvePrivateKey)
        signature = ca.key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    bits = b"\x00" + signature
    body = tbs + der[tbs_end:alg_end] + b"\x03" + _der_length(len(bits)) + bits
    return b"\x30" + _der_length(len(body)) + body
