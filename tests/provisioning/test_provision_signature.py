"""Signed kits: verify_kit passes an untouched kit and names the file on any tampering."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from flare_protocol.errors import KitIncomplete, KitTampered
from flare_protocol.signature import ca_fingerprint, normalize_fingerprint, verify_kit
from provisioning import ProvisionResult
from tests.kit_factory import copy_kit


@pytest.fixture
def kit(provisioned: ProvisionResult, tmp_path: Path) -> Path:
    return copy_kit(provisioned, "site-1", tmp_path)


def _tampered(kit: Path, fingerprint: str | None = None) -> KitTampered:
    with pytest.raises(KitTampered) as info:
        verify_kit(kit, fingerprint)
    return info.value


def test_untouched_kit_verifies(kit: Path, provisioned: ProvisionResult) -> None:
    verify_kit(kit)
    verify_kit(kit, provisioned.ca_fingerprint)


@pytest.mark.parametrize(
    "transform",
    [
        lambda fp: fp,
        lambda fp: fp.lower(),
        lambda fp: fp.replace(":", ""),
        lambda fp: fp.replace(":", "").lower(),
        lambda fp: f"sha256 Fingerprint={fp}",
        lambda fp: f"SHA256:{fp.replace(':', '')}",
    ],
)
def test_fingerprint_is_accepted_in_every_printed_form(
    kit: Path, provisioned: ProvisionResult, transform
) -> None:
    verify_kit(kit, transform(provisioned.ca_fingerprint))


def test_fingerprint_is_colon_separated_upper_hex(provisioned: ProvisionResult) -> None:
    fp = provisioned.ca_fingerprint
    assert len(fp) == 95 and fp.count(":") == 31 and fp == fp.upper()
    pem = (provisioned.kits["site-1"] / "startup" / "rootCA.pem").read_bytes()
    assert ca_fingerprint(pem) == fp
    assert normalize_fingerprint(fp) == fp.replace(":", "").lower()


@pytest.mark.parametrize("bad", ["", "abc", "zz" * 32, "AB:" * 40])
def test_malformed_fingerprint_is_a_value_error(kit: Path, bad: str) -> None:
    with pytest.raises(ValueError):
        verify_kit(kit, bad)


@pytest.mark.parametrize(
    "name", ["client.crt", "client.key", "fed_client.json", "start.sh", "README.md", "rootCA.pem"]
)
def test_edited_file_is_named(kit: Path, name: str) -> None:
    path = kit / "startup" / name
    path.write_bytes(path.read_bytes() + b"\n")
    assert _tampered(kit).path == str(path)


def test_added_file_is_named(kit: Path) -> None:
    extra = kit / "startup" / "evil.sh"
    extra.write_text("#!/bin/sh\n")
    exc = _tampered(kit)
    assert exc.path == str(extra) and "added" in str(exc)


def test_file_replaced_by_a_fifo_is_refused_without_blocking(kit: Path) -> None:
    path = kit / "startup" / "fed_client.json"
    path.unlink()
    os.mkfifo(path)
    assert _tampered(kit).path == str(path)


def test_added_folder_is_named(kit: Path) -> None:
    (kit / "startup" / "more").mkdir()
    assert _tampered(kit).path == str(kit / "startup" / "more")


@pytest.mark.parametrize("name", ["client.crt", "fed_client.json", "rootCA.pem"])
def test_removed_file_is_named(kit: Path, name: str) -> None:
    path = kit / "startup" / name
    path.unlink()
    exc = _tampered(kit)
    assert exc.path == str(path) and "removed" in str(exc)


def test_file_replaced_by_a_symlink_to_identical_content_is_refused(
    kit: Path, tmp_path: Path
) -> None:
    path = kit / "startup" / "fed_client.json"
    outside = tmp_path / "elsewhere.json"
    shutil.copy(path, outside)
    path.unlink()
    path.symlink_to(outside)
    exc = _tampered(kit)
    assert exc.path == str(path) and "symlink" in str(exc)


def test_startup_folder_replaced_by_a_symlink_is_refused(kit: Path, tmp_path: Path) -> None:
    real = tmp_path / "real_startup"
    (kit / "startup").rename(real)
    (kit / "startup").symlink_to(real)
    exc = _tampered(kit)
    assert exc.path == str(kit / "startup") and "symlink" in str(exc)


def test_signature_json_replaced_by_a_symlink_is_refused(kit: Path, tmp_path: Path) -> None:
    sig = kit / "startup" / "signature.json"
    outside = tmp_path / "sig.json"
    shutil.copy(sig, outside)
    sig.unlink()
    sig.symlink_to(outside)
    assert _tampered(kit).path == str(sig)


def test_removed_signature_is_named(kit: Path) -> None:
    sig = kit / "startup" / "signature.json"
    sig.unlink()
    assert _tampered(kit).path == str(sig)


def test_rehashed_manifest_without_the_ca_key_fails_the_signature(kit: Path) -> None:
    import hashlib

    cfg = kit / "startup" / "fed_client.json"
    cfg.write_text(cfg.read_text().replace("site-1", "site-9"))
    sig = kit / "startup" / "signature.json"
    doc = json.loads(sig.read_text())
    doc["files"]["fed_client.json"] = hashlib.sha256(cfg.read_bytes()).hexdigest()
    sig.write_text(json.dumps(doc))
    exc = _tampered(kit)
    assert exc.path == str(sig) and "signature" in str(exc)


def test_kit_of_another_project_fails_the_fingerprint(
    kit: Path, provisioned: ProvisionResult, foreign: ProvisionResult
) -> None:
    other = foreign.kits["site-1"]
    verify_kit(other)  # whole and self-consistent ...
    exc = _tampered(other, provisioned.ca_fingerprint)  # ... but not ours
    assert exc.path == str(other / "startup" / "rootCA.pem")
    assert "fingerprint" in str(exc)


def test_swapped_root_ca_fails_even_with_a_matching_digest(
    kit: Path, foreign: ProvisionResult
) -> None:
    """Swap rootCA.pem and fix its digest: the signature no longer verifies."""
    import hashlib

    root = kit / "startup" / "rootCA.pem"
    root.unlink()
    shutil.copy(foreign.kits["site-1"] / "startup" / "rootCA.pem", root)
    sig = kit / "startup" / "signature.json"
    doc = json.loads(sig.read_text())
    doc["files"]["rootCA.pem"] = hashlib.sha256(root.read_bytes()).hexdigest()
    sig.write_text(json.dumps(doc))
    assert _tampered(kit).path == str(sig)


def test_local_folder_is_not_signed(kit: Path) -> None:
    settings = kit / "local" / "settings.json"
    settings.write_text(json.dumps({"log_level": "DEBUG"}))
    (kit / "local" / "authorization.json").write_text("{}")
    verify_kit(kit)


def test_folder_without_startup_is_incomplete(tmp_path: Path) -> None:
    with pytest.raises(KitIncomplete):
        verify_kit(tmp_path)


def test_verification_does_not_need_write_access(kit: Path) -> None:
    os.chmod(kit / "startup", 0o500)
    try:
        verify_kit(kit)
    finally:
        os.chmod(kit / "startup", 0o700)


# -- a malformed signature.json, and a root CA that cannot be the signer (issue 10) --------


def _edit_signature(kit: Path, edit: Any) -> Path:
    """Edit signature.json's object in place (``edit`` returns None), or replace its text
    (``edit`` returns the new text)."""
    sig = kit / "startup" / "signature.json"
    doc = json.loads(sig.read_text())
    text = edit(doc)
    sig.write_text(text if text is not None else json.dumps(doc))
    return sig


MEMBERS = "does not have the signature.json format 1 members"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda doc: "{not json", "is not valid JSON"),
        (lambda doc: "[1, 2]", "does not have the signature.json format 1 members"),
        (
            lambda doc: doc.__delitem__("algorithm"),
            "does not have the signature.json format 1 members",
        ),
        (lambda doc: doc.update(extra=1), "does not have the signature.json format 1 members"),
        (lambda doc: doc.update(format=2), "unsupported signature format 2"),
        (lambda doc: doc.update(files=["README.md"]), "'files' must map file names to SHA-256"),
        (lambda doc: doc["files"].update({"x": 1}), "'files' must map file names to SHA-256"),
        (lambda doc: doc["files"].update({"../x": "00"}), "lists an invalid file name '../x'"),
        (lambda doc: doc["files"].update({"a/b": "00"}), "lists an invalid file name 'a/b'"),
        (
            lambda doc: doc["files"].update({"signature.json": "00"}),
            "lists an invalid file name 'signature.json'",
        ),
        (lambda doc: doc.update(signature="not base64!"), "'signature' is not base64"),
        (lambda doc: doc.update(signature=7), "'signature' is not base64"),
        (lambda doc: " " * (1024 * 1024 + 1), "is too large"),
    ],
)
def test_a_malformed_signature_json_is_refused_naming_it(
    kit: Path, edit: Any, message: str
) -> None:
    sig = _edit_signature(kit, edit)
    exc = _tampered(kit)
    assert exc.path == str(sig)
    assert str(exc).startswith(f"{sig}: ") and message in str(exc)


def test_another_algorithm_than_the_root_keys_fails_the_signature(kit: Path) -> None:
    sig = _edit_signature(kit, lambda doc: doc.update(algorithm="rsa-pss-sha256"))  # EC root
    exc = _tampered(kit)
    assert exc.path == str(sig) and "does not verify with the kit's root CA" in str(exc)


def test_a_kit_whose_root_ca_is_not_signed_is_refused(kit: Path) -> None:
    root = kit / "startup" / "rootCA.pem"
    root.unlink()
    _edit_signature(kit, lambda doc: doc["files"].__delitem__("rootCA.pem"))
    exc = _tampered(kit)
    assert exc.path == str(root) and "the root CA is not among the signed files" in str(exc)


def test_a_root_ca_that_is_not_a_certificate_is_refused(kit: Path) -> None:
    import hashlib

    root = kit / "startup" / "rootCA.pem"
    root.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    digest = hashlib.sha256(root.read_bytes()).hexdigest()
    _edit_signature(kit, lambda doc: doc["files"].update({"rootCA.pem": digest}))
    exc = _tampered(kit)
    assert exc.path == str(root) and "is not a PEM certificate" in str(exc)


def test_a_startup_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "startup").write_text("not a folder")
    exc = _tampered(tmp_path)
    assert exc.path == str(tmp_path / "startup") and "is not a folder" in str(exc)
