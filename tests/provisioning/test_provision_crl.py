"""Every provisioning run signs a revocation list (an X.509 CRL) with the next CRL number."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from flare_protocol.kit import REVOCATIONS, STARTUP
from flare_protocol.signature import verify_kit
from provisioning import provision
from provisioning.state import load_ca


def _crl(path: Path) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(path.read_bytes())


def _number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def test_each_run_signs_a_newer_list_of_every_revoked_serial(project_yml: Path, tmp_path: Path):
    first = provision(project_yml, tmp_path)
    second = provision(project_yml, tmp_path, revoke=["site-1"])
    assert (first.crl_number, second.crl_number) == (1, 2)
    assert second.crl_path == second.state_dir / REVOCATIONS

    ca = load_ca(second.state_dir).cert
    crl = _crl(second.crl_path)
    assert crl.issuer == ca.subject and crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    assert _number(crl) == 2
    assert [format(r.serial_number, "x") for r in crl] == second.revoked_serials
    assert crl.next_update_utc is not None and crl.next_update_utc >= ca.not_valid_after_utc
    revoked = crl.get_revoked_certificate_by_serial_number(int(second.revoked_serials[0], 16))
    assert revoked is not None

    # The server kit carries the same list, signed with the kit; no other kit carries one.
    server = second.kits["localhost"]
    assert (server / STARTUP / REVOCATIONS).read_bytes() == second.crl_path.read_bytes()
    verify_kit(server)
    assert not (second.kits["site-2"] / STARTUP / REVOCATIONS).exists()
    assert _number(_crl(first.kits["localhost"] / STARTUP / REVOCATIONS)) == 1


def test_the_crl_number_survives_in_state_json(project_yml: Path, tmp_path: Path):
    import json

    for _ in range(3):
        result = provision(project_yml, tmp_path)
    state = json.loads((result.state_dir / "state.json").read_text())
    assert state["crl_number"] == 3 == _number(_crl(result.crl_path))
