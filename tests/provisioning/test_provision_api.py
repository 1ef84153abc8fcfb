"""The Python API others build on: provision() and the session fixture."""

from __future__ import annotations

import provisioning
from flare_protocol.signature import verify_kit
from provisioning import ProvisionResult


def test_public_api_is_pinned() -> None:
    assert sorted(provisioning.__all__) == sorted(
        ["KEY_TYPES", "Participant", "Project", "ProvisionResult", "load_project", "provision"]
    )


def test_fixture_provisions_every_participant(provisioned: ProvisionResult) -> None:
    assert provisioned.project == "testproj"
    assert provisioned.prod_dir.name == "prod_00"
    assert set(provisioned.kits) == {
        "localhost",
        "site-1",
        "site-2",
        "admin@org_a.com",
        "lead@org_a.com",
        "lead@org_b.com",
        "orgadmin@org_a.com",
        "member@org_b.com",
    }
    assert provisioned.issued == list(provisioned.kits)
    assert provisioned.reused == [] and provisioned.revoked == []


def test_every_fixture_kit_verifies_against_the_printed_fingerprint(
    provisioned: ProvisionResult,
) -> None:
    for kit in provisioned.kits.values():
        verify_kit(kit, provisioned.ca_fingerprint)
