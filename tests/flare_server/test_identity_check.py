"""IdentityChecker without a network: the second line behind the TLS handshake."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography import x509

import tests.kit_factory as kf
from flare_protocol.errors import IdentityRejected, KitError
from flare_protocol.identity import ParticipantType
from flare_server.identity_check import IdentityChecker, load_revoked, parse_serial


def _pem(kit: Path) -> bytes:
    startup = Path(kit) / "startup"
    name = "server.crt" if (startup / "server.crt").exists() else "client.crt"
    return (startup / name).read_bytes()


def test_identity_comes_from_the_certificate(kits):
    ident = IdentityChecker(ParticipantType.ADMIN).check_pem(_pem(kits["lead@org_b.com"]))
    assert (ident.name, ident.org, ident.role.value) == ("lead@org_b.com", "org_b", "lead")


def test_server_auth_only_leaf_is_refused(provisioned, tmp_path):
    kit = kf.server_auth_only_kit(provisioned, "admin@org_a.com", tmp_path)
    with pytest.raises(IdentityRejected, match="clientAuth"):
        IdentityChecker(ParticipantType.ADMIN).check_pem(_pem(kit))


def test_server_certificate_is_refused_on_the_admin_and_site_endpoints(kits):
    for ptype in (ParticipantType.ADMIN, ParticipantType.SITE):
        with pytest.raises(IdentityRejected, match="server certificate cannot call"):
            IdentityChecker(ptype).check_pem(_pem(kits["localhost"]))


def test_a_rejection_is_cached_and_still_rejected(provisioned, tmp_path):
    checker = IdentityChecker(ParticipantType.ADMIN)
    pem = _pem(kf.ca_leaf_kit(provisioned, "admin@org_a.com", tmp_path))
    for _ in range(2):
        with pytest.raises(IdentityRejected, match="CA:TRUE"):
            checker.check_pem(pem)


def test_revocation_applies_to_cached_identities(kits):
    pem = _pem(kits["member@org_b.com"])
    checker = IdentityChecker(ParticipantType.ADMIN)
    ident = checker.check_pem(pem)
    checker.set_revoked({ident.serial})
    with pytest.raises(IdentityRejected, match="revoked"):
        checker.check_pem(pem)


def test_a_cached_call_costs_microseconds(kits):
    pem = _pem(kits["member@org_b.com"])
    checker = IdentityChecker(ParticipantType.ADMIN)
    checker.check_pem(pem)
    start = time.perf_counter()
    for _ in range(1000):
        checker.check_pem(pem)
    assert (time.perf_counter() - start) / 1000 < 100e-6


def test_auth_context_without_a_certificate_is_refused():
    with pytest.raises(IdentityRejected, match="no client certificate"):
        IdentityChecker(ParticipantType.ADMIN).check_auth_context({})


def test_revoked_list_accepts_hex_with_colons_and_prefix(tmp_path, kits):
    serial = x509.load_pem_x509_certificate(_pem(kits["site-1"])).serial_number
    path = tmp_path / "revoked.json"
    hexed = f"{serial:x}"
    path.write_text(f'{{"serials": ["{hexed}", "0x0A", "0b:0c"]}}')
    assert load_revoked(path) == {serial, 10, 0x0B0C}
    assert parse_serial("0A:1b") == 0x0A1B
    assert load_revoked(tmp_path / "missing.json") == frozenset()


def test_a_malformed_revoked_list_stops_start_up(tmp_path):
    path = tmp_path / "revoked.json"
    path.write_text('{"serials": "abc"}')
    with pytest.raises(KitError, match="revocation list"):
        load_revoked(path)
