"""Issue 8, security items 1, 2, 3, 5, 6 and 12: regression tests through public interfaces.

Real server (``ServerThread``) and, where a job must run, real site processes; admin
Sessions from the session's provisioned project (two orgs: org_a with site-1 and
lead@org_a.com, org_b with site-2 and lead@org_b.com); certificates made by our own
provisioning and tests/kit_factory.py; raw generated stubs where a client must get past
the Session's pre-flight to reach the server.
"""

from __future__ import annotations

import json
import struct
import time
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import tests.kit_factory as kf
from flare_admin import (
    AuthorizationError,
    CertificateNotTrusted,
    InvalidJobDefinition,
    KitError,
    Session,
    new_secure_session,
)
from flare_cli.main import main as flare_main
from flare_protocol._generated import common_pb2
from flare_protocol.identity import OID_ADMIN_ROLE, OID_PARTICIPANT_TYPE
from flare_protocol.job_format import META_KEYS, SERVER_OWNED_KEYS
from flare_protocol.wire_errors import decode_detail
from flare_server.authz import DEFAULT_POLICY
from tests.e2e.jobs_helpers import FAST_SERVER, Cluster, write_job
from tests.flare_site.runtime_helpers import SiteProcess, site_kit
from tests.server_harness import ServerThread, admin_stub, wait_until

pytestmark = pytest.mark.timeout(180)

ADMIN = "admin@org_a.com"
LEAD_A = "lead@org_a.com"
LEAD_B = "lead@org_b.com"


# -- shared set-up ---------------------------------------------------------------------------


def _policy(**lead: str) -> dict[str, Any]:
    """The default authorization table as authorization.json, with the lead's row changed."""
    roles = {
        role.value: {right.value: scope.value for right, scope in rights.items()}
        for role, rights in DEFAULT_POLICY.items()
    }
    roles["lead"].update(lead)
    return {"format": 1, "roles": roles}


def _server_kit(provisioned: Any, dest: Path, policy: dict[str, Any] | None = None) -> Path:
    kit = kf.copy_kit(provisioned, "localhost", dest)
    if policy is not None:
        (kit / "local" / "authorization.json").write_text(json.dumps(policy))
    return kit


class _Cluster(Cluster):
    """jobs_helpers.Cluster on a copy of the server kit (with its own authorization.json)."""

    def __init__(
        self, provisioned: Any, tmp: Path, server_kit: Path, workspace: Path | None = None
    ) -> None:
        super().__init__(provisioned, tmp)
        self.server = ServerThread(server_kit, workspace or tmp / "server-ws", **FAST_SERVER)
        self.opened: list[Session] = []

    def open(self, name: str) -> Session:
        session = new_secure_session(
            name, self.provisioned.kits[name], server_address=self.server.admin_address
        )
        self.opened.append(session)
        return session

    def __exit__(self, *exc: object) -> None:
        for session in self.opened:
            session.close()
        super().__exit__(*exc)


def _wait_done(session: Session, job_id: str, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        meta = dict(session.get_job_meta(job_id))
        if str(meta["status"]).startswith("FINISHED"):
            return meta
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {meta['status']} after {timeout} s")
        time.sleep(0.1)


def _with_meta(job: Path, **keys: Any) -> Path:
    """Set keys of the job's meta.json (None removes a key)."""
    meta = json.loads((job / "meta.json").read_text())
    meta.update(keys)
    meta = {k: v for k, v in meta.items() if v is not None}
    (job / "meta.json").write_text(json.dumps(meta))
    return job


def _zip_folder(job: Path, target: Path) -> Path:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(job.rglob("*")):
            if path.is_file():
                zf.write(path, f"{job.name}/{path.relative_to(job).as_posix()}")
    return target


@pytest.fixture(scope="module")
def two_orgs(provisioned: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Cluster]:
    """Server + site-1 (org_a) + site-2 (org_b); leads may clone any job (a policy where
    cloning reaches further than downloading), but download only their own."""
    tmp = tmp_path_factory.mktemp("two-orgs")
    kit = _server_kit(provisioned, tmp / "server-kit", _policy(clone_job="any"))
    with _Cluster(provisioned, tmp, kit) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def org_a_job(two_orgs: _Cluster, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A job of lead@org_a.com that completed with a final model."""
    tmp = tmp_path_factory.mktemp("org-a-job")
    lead_a = two_orgs.open(LEAD_A)
    job_id = lead_a.submit_job(str(write_job(tmp, tmp / "sends", name="org-a", rounds=1)))
    assert _wait_done(lead_a, job_id)["status"] == "FINISHED:COMPLETED"
    return job_id


@pytest.fixture(scope="module")
def server(provisioned: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """A server with no site connected: submitted jobs wait, nothing is deployed."""
    tmp = tmp_path_factory.mktemp("sec-server")
    with ServerThread(provisioned.kits["localhost"], tmp / "ws") as srv:
        yield srv


@pytest.fixture(scope="module")
def admin(server: ServerThread, provisioned: Any) -> Iterator[Session]:
    with new_secure_session(
        ADMIN, provisioned.kits[ADMIN], server_address=server.admin_address
    ) as session:
        yield session


# -- 1. cross-org model leak -----------------------------------------------------------------


def test_01_a_lead_cannot_start_from_another_orgs_model_by_any_path(
    two_orgs: _Cluster, org_a_job: str, tmp_path: Path
):
    lead_a, lead_b = two_orgs.open(LEAD_A), two_orgs.open(LEAD_B)
    # org_a continues from its own model: allowed, and recorded by the server.
    seeded = lead_a.submit_job(
        str(write_job(tmp_path / "a", tmp_path / "a-sends", name="a2", rounds=1)),
        initial_model_job_id=org_a_job,
    )
    assert lead_a.get_job_meta(seeded)["initial_model_job_id"] == org_a_job
    assert _wait_done(lead_a, seeded)["status"] == "FINISHED:COMPLETED"

    job_b = write_job(tmp_path / "b", tmp_path / "b-sends", name="b", rounds=1)
    # the upload parameter: refused before (kept as is)
    with pytest.raises(AuthorizationError, match=f"job {org_a_job}"):
        lead_b.submit_job(str(job_b), initial_model_job_id=org_a_job)
    # meta.json, checked by the Session before the upload, and by the server for a zip
    forged = _with_meta(job_b, initial_model_job_id=org_a_job)
    for path in (forged, _zip_folder(forged, tmp_path / "forged.zip")):
        with pytest.raises(InvalidJobDefinition, match="'initial_model_job_id'.*set by the server"):
            lead_b.submit_job(str(path))
    # clone_job with a model source, and clone of a job whose meta carries one
    own = lead_b.submit_job(str(_with_meta(job_b, initial_model_job_id=None)))
    with pytest.raises(AuthorizationError, match=f"job {org_a_job}"):
        lead_b.clone_job(own, initial_model_job_id=org_a_job)
    with pytest.raises(AuthorizationError, match=f"job {org_a_job}"):
        lead_b.clone_job(seeded)
    # nothing of lead_b's starts from org_a's model; org_a's own clone keeps its source
    assert lead_a.get_job_meta(lead_a.clone_job(seeded))["initial_model_job_id"] == org_a_job
    for job in lead_b.list_jobs(detailed=True):
        if job["submitter_name"] == LEAD_B:
            assert job.get("initial_model_job_id") is None, job
    _wait_done(lead_b, own)


def test_01_the_runner_rechecks_the_submitters_right_when_it_reads_the_model(
    provisioned: Any, tmp_path: Path
):
    kit = _server_kit(provisioned, tmp_path / "server-kit")
    with _Cluster(provisioned, tmp_path, kit) as cluster:
        lead_a = cluster.open(LEAD_A)
        source = lead_a.submit_job(str(write_job(tmp_path / "a", tmp_path / "sa", rounds=1)))
        assert _wait_done(lead_a, source)["status"] == "FINISHED:COMPLETED"
        for proc in cluster.sites.values():  # the next job waits for its sites
            proc.terminate(15)
        wait_until(lambda: not cluster.server.call(cluster.server.server.registry.names), 30)
        job = write_job(tmp_path / "b", tmp_path / "sb", name="waits", rounds=1)
        waiting = lead_a.submit_job(str(job), initial_model_job_id=source)
        assert lead_a.get_job_meta(waiting)["status"] == "SUBMITTED"
    # The operator takes the leads' download right away; the queued job may not read it now.
    (kit / "local" / "authorization.json").write_text(json.dumps(_policy(download_job="none")))
    with _Cluster(provisioned, tmp_path / "again", kit, tmp_path / "server-ws") as cluster:
        meta = _wait_done(cluster.open(LEAD_A), waiting)
    assert meta["status"] == "FINISHED:FAILED_TO_RUN", meta
    reason = meta["status_history"][-1]["reason"]
    assert f"initial_model_job_id {source}" in reason and "download_job" in reason, reason


# -- 2. fields the server writes --------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["errors", "deployed_sites", "rounds_completed", "schedule_reason", "status"]
)
def test_02_meta_json_may_not_preset_a_field_the_server_writes(
    admin: Session, server: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture[str], key
):
    forged = {"errors": [{"message": "forged"}], "deployed_sites": ["site-2"]}.get(key, 3)
    job = _with_meta(write_job(tmp_path, tmp_path / "out", name="forged"), **{key: forged})
    expected = f"meta.json: key '{key}' is set by the server"
    assert flare_main(["job", "validate", str(job)]) == 1
    assert expected in capsys.readouterr().err
    before = len(admin.list_jobs())
    with pytest.raises(InvalidJobDefinition) as local:  # the Session's check, before the upload
        admin.submit_job(str(job))
    assert str(local.value).startswith(f"{job}/{expected}"), local.value
    with pytest.raises(InvalidJobDefinition) as remote:  # the server's check of a zip
        admin.submit_job(str(_zip_folder(job, tmp_path / "forged.zip")))
    assert str(remote.value).startswith(expected), remote.value
    assert len(admin.list_jobs()) == before


def test_02_every_key_the_server_writes_into_a_job_is_server_owned(
    two_orgs: _Cluster, org_a_job: str, tmp_path: Path
):
    lead_a = two_orgs.open(LEAD_A)
    crash = write_job(
        tmp_path, tmp_path / "out", name="crash", rounds=1, extra_args=("--crash-round", "1")
    )
    failed = _wait_done(lead_a, lead_a.submit_job(str(crash)))
    assert failed["status"] == "FINISHED:EXECUTION_EXCEPTION" and failed["errors"]
    hang = write_job(tmp_path / "h", tmp_path / "h-out", name="h", extra_args=("--hang-round", "1"))
    busy = lead_a.submit_job(str(hang))  # holds both sites' only job slot
    wait_until(lambda: lead_a.get_job_meta(busy).status == "RUNNING", 30)
    queued = lead_a.submit_job(str(write_job(tmp_path / "w", tmp_path / "w-out", name="w")))
    wait_until(lambda: lead_a.get_job_meta(queued).get("schedule_reason"), 10)  # waits, says why
    metas = [failed, dict(lead_a.get_job_meta(queued)), dict(lead_a.get_job_meta(org_a_job))]
    metas.append(dict(lead_a.get_job_meta(busy)))
    lead_a.abort_job(queued)
    lead_a.abort_job(busy)
    _wait_done(lead_a, busy)
    for meta in metas:
        unknown = set(meta) - META_KEYS - SERVER_OWNED_KEYS
        assert not unknown, f"the server wrote {sorted(unknown)}: add them to SERVER_OWNED_KEYS"


# -- 3. zip bombs -----------------------------------------------------------------------------


def _zeros_bomb(path: Path, job: Path, gib: int = 1) -> Path:
    """The job zipped with ``app/custom/zeros.bin``: ``gib`` GiB of zeros in about 1 MiB.

    Written by hand from one deflated MiB repeated (full flushes make blocks independent),
    so that making it costs a CRC pass instead of deflating a GiB.
    """
    _zip_folder(job, path)
    mib = bytes(1 << 20)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflate.compress(mib)
    deflate.flush(zlib.Z_FULL_FLUSH)
    block = deflate.compress(mib) + deflate.flush(zlib.Z_FULL_FLUSH)
    data = block * (1024 * gib) + deflate.flush()
    crc = 0
    for _ in range(1024 * gib):
        crc = zlib.crc32(mib, crc)
    size = (1 << 30) * gib
    name = f"{job.name}/app/custom/zeros.bin".encode()
    with zipfile.ZipFile(path) as zf:
        entries = [(info, zf.read(info)) for info in zf.infolist()]
    out = bytearray()
    directory = bytearray()
    for info, content in [*((i, c) for i, c in entries), (None, b"")]:
        if info is None:
            fname, method, csize, usize, ccrc, raw = name, 8, len(data), size, crc, data
        else:
            fname, method = info.filename.encode(), 0
            csize = usize = len(content)
            ccrc, raw = zlib.crc32(content), content
        offset = len(out)
        out += (
            struct.pack(
                "<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, ccrc, csize, usize, len(fname), 0
            )
            + fname
            + raw
        )
        directory += (
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                20,
                20,
                0,
                method,
                0,
                0,
                ccrc,
                csize,
                usize,
                len(fname),
                0,
                0,
                0,
                0,
                0o644 << 16,
                offset,
            )
            + fname
        )
    count = len(entries) + 1
    out += directory + struct.pack(
        "<IHHHHIIH", 0x06054B50, 0, 0, count, count, len(directory), len(out), 0
    )
    path.write_bytes(bytes(out))
    return path


def test_03_a_zip_bomb_inside_the_size_cap_is_refused_before_inflating(
    admin: Session, tmp_path: Path
):
    job = write_job(tmp_path, tmp_path / "out", name="bomb")
    bomb = _zeros_bomb(tmp_path / "bomb.zip", job)
    assert bomb.stat().st_size < 2 * 1024 * 1024
    with zipfile.ZipFile(bomb) as zf:
        assert sum(i.file_size for i in zf.infolist()) > 1 << 30
    before = len(admin.list_jobs())
    started = time.monotonic()
    with pytest.raises(InvalidJobDefinition) as info:
        admin.submit_job(str(bomb))
    message = str(info.value)
    assert "zeros.bin" in message and "compression ratio" in message, message
    assert "max_compression_ratio" in message, message
    assert time.monotonic() - started < 30  # generous: refused from the directory, not inflated
    assert len(admin.list_jobs()) == before


# -- 5. certificates issued through an intermediate CA ----------------------------------------


def test_05_a_leaf_issued_through_a_sub_ca_is_rejected(
    server: ServerThread, provisioned: Any, tmp_path: Path
):
    kit = kf.sub_ca_kit(provisioned, ADMIN, tmp_path)
    stub, channel = admin_stub(kit, server.admin_address)
    with channel, pytest.raises(grpc.RpcError) as info:
        stub.Hello(common_pb2.Empty(), timeout=10)
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED, info.value
    detail = decode_detail(info.value.trailing_metadata())
    assert detail is not None and detail.type == "AuthenticationError"
    assert "not issued directly by the project root CA" in detail.message, detail.message
    log = server.server.workspace / "logs" / "server.log"
    wait_until(
        lambda: any(
            "rejected hello from ipv4:127.0.0.1:" in line and "intermediate CA" in line
            for line in log.read_text().splitlines()
        )
    )
    with pytest.raises(CertificateNotTrusted, match="intermediate CA"):  # the Session's pre-flight
        new_secure_session(ADMIN, kit, server_address=server.admin_address, timeout=5)


# -- 6. malformed certificates ----------------------------------------------------------------
# Shapes that reach the identity check: our own extensions are unknown to BoringSSL, so
# it lets them through. Duplicated or malformed standard extensions fail the handshake
# already; tests/flare_server/test_identity_check.py shows the checker refuses them too.

MALFORMED = {
    "duplicated participant type": ({}, OID_PARTICIPANT_TYPE, "duplicate extension"),
    "duplicated admin role": ({}, OID_ADMIN_ROLE, "duplicate extension"),
    "participant type not a UTF8String": (
        {OID_PARTICIPANT_TYPE: b"\x02\x01\x05"},
        None,
        "malformed flare identity extension",
    ),
    "role not UTF-8": ({OID_ADMIN_ROLE: b"\x0c\x02\xff\xfe"}, None, "malformed"),
    "role with a lying length": ({OID_ADMIN_ROLE: b"\x0c\x84\x7f\xff\xff\xffx"}, None, "malformed"),
}


@pytest.mark.parametrize("shape", MALFORMED)
def test_06_a_malformed_certificate_is_a_logged_unauthenticated_rejection(
    server: ServerThread, provisioned: Any, tmp_path: Path, shape: str
):
    values, duplicate, needle = MALFORMED[shape]
    kit = kf.tampered_extensions_kit(
        provisioned, ADMIN, tmp_path, values=values, duplicate=duplicate
    )
    log = server.server.workspace / "logs" / "server.log"
    seen = len(log.read_text().splitlines())
    stub, channel = admin_stub(kit, server.admin_address)
    with channel, pytest.raises(grpc.RpcError) as info:
        stub.Hello(common_pb2.Empty(), timeout=10)
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED, info.value
    detail = decode_detail(info.value.trailing_metadata())
    assert detail is not None and detail.type == "AuthenticationError", info.value
    assert needle in detail.message, detail.message
    line = wait_until(
        lambda: next(
            (ln for ln in log.read_text().splitlines()[seen:] if "rejected hello" in ln), None
        )
    )
    assert "from ipv4:127.0.0.1:" in line and needle in line, line
    with pytest.raises(KitError, match=needle):  # the Session's pre-flight says the same
        new_secure_session(ADMIN, kit, server_address=server.admin_address, timeout=5)


# -- 12. typos ---------------------------------------------------------------------------------


def test_12_an_unknown_meta_json_key_is_refused_naming_the_closest_known_key(
    admin: Session, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    job = _with_meta(write_job(tmp_path, tmp_path / "out", name="typo"), min_client=2)
    expected = "meta.json: unknown key 'min_client' (did you mean 'min_clients'?)"
    assert flare_main(["job", "validate", str(job)]) == 1
    assert expected in capsys.readouterr().err
    with pytest.raises(InvalidJobDefinition) as local:
        admin.submit_job(str(job))
    with pytest.raises(InvalidJobDefinition) as remote:
        admin.submit_job(str(_zip_folder(job, tmp_path / "typo.zip")))
    assert str(local.value).startswith(f"{job}/{expected}"), local.value  # before the upload
    assert str(remote.value).startswith(expected), remote.value  # the server's, for a zip
    nvflare_keys = {"custom_props": {"team": "a"}, "scope": "private", "launcher_spec": {}}
    _with_meta(job, min_client=None, **nvflare_keys)
    accepted = admin.submit_job(str(job))  # NVIDIA FLARE's other keys are known
    assert admin.get_job_meta(accepted)["custom_props"] == {"team": "a"}
    admin.abort_job(accepted)


def test_12_a_site_warns_about_unknown_settings_naming_the_closest_key(
    provisioned: Any, tmp_path: Path
):
    kit = site_kit(provisioned, tmp_path, "site-1", stop_grace_seconds=5, heartbeat_intervall_s=1)
    with SiteProcess(kit, "127.0.0.1:9") as site:  # nothing listens: the warning comes first
        wait_until(lambda: "stop_grace_seconds" in site.stderr(), 20)
        text = site.stderr()
        site.terminate(15)
    assert "heartbeat_intervall_s' (did you mean 'heartbeat_interval_s'?)" in text, text
    assert "'stop_grace_seconds' (did you mean 'stop_grace_s'?)" in text, text
    assert str(kit / "local" / "settings.json") in text
