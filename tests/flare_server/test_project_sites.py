"""Jobs naming sites the project does not have are refused (issue 8 item 11)."""

from __future__ import annotations

import json

import pytest

from flare_protocol.errors import InvalidJobDefinition
from flare_protocol.kit import PARTICIPANTS
from flare_server.project_sites import ProjectSites
from tests.flare_server.conftest import job_zip
from tests.flare_server.test_server_jobs import submit
from tests.kit_factory import copy_kit, project_ca, resign_kit
from tests.server_harness import ServerThread, admin_stub, wait_until

SITES = ProjectSites("proj", ("site-1", "site-2"))


def _meta(**fields):
    return {"name": "j", "min_clients": 1, "deploy_map": {"app": ["@ALL"]}, **fields}


@pytest.mark.parametrize(
    "meta",
    [
        _meta(),
        _meta(deploy_map={"app": ["server", "site-1"]}),
        _meta(min_clients=2),
        _meta(deploy_map={"a": ["server"], "b": ["site-2"]}, mandatory_clients=["site-1"]),
        _meta(resource_spec={"site-1": {"num_of_gpus": 1}}),
    ],
)
def test_a_job_within_the_project_passes(meta):
    SITES.check_job(meta)


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        (
            _meta(deploy_map={"app": ["server", "site-1", "site-9"]}),
            "not in the project: site-9 (deploy_map); the sites of project proj are site-1, site-2",
        ),
        (
            _meta(mandatory_clients=["site-9"], resource_spec={"site-9": {}, "site-7": {}}),
            "site-7 (resource_spec), site-9 (mandatory_clients, resource_spec)",
        ),
        (_meta(min_clients=3), "'min_clients' is 3 but the job can run on at most 2 site(s)"),
    ],
)
def test_a_job_naming_other_sites_or_needing_more_is_refused(meta, message):
    with pytest.raises(InvalidJobDefinition) as caught:
        SITES.check_job(meta)
    assert message in caught.value.message and caught.value.path == "meta.json"


def test_a_server_kit_without_the_site_list_warns_and_checks_nothing(provisioned, tmp_path):
    kit = copy_kit(provisioned, "localhost", tmp_path / "kits")
    (kit / "startup" / PARTICIPANTS).unlink()
    resign_kit(kit, project_ca(provisioned))  # an older kit, honestly signed
    with ServerThread(kit, tmp_path / "ws") as server:
        log = (server.server.workspace / "logs" / "server.log").read_text()
        assert f"has no {PARTICIPANTS}" in log and "re-provision" in log
        stub, channel = admin_stub(provisioned.kits["admin@org_a.com"], server.admin_address)
        with channel:
            job_id = submit(stub, job_zip(deploy_map={"app": ["server", "site-9"]}))
            meta = wait_until(
                lambda: (m := server.server.store.get(job_id)).get("schedule_reason") and m
            )
    assert meta["status"] == "SUBMITTED"
    assert "site-9 (deploy_map; not connected)" in meta["schedule_reason"]
    assert json.dumps(meta["deploy_map"]) == '{"app": ["server", "site-9"]}'


def test_a_site_added_later_is_known_once_it_connects():
    """A re-provisioned project's new site holds a certificate the server trusts: jobs may
    name it before the server kit's participants.json is updated."""
    connected = ["site-1"]
    sites = ProjectSites("proj", ("site-1", "site-2"), connected=lambda: connected)
    with pytest.raises(InvalidJobDefinition, match="site-3"):
        sites.check_job(_meta(deploy_map={"app": ["site-3"]}))
    connected.append("site-3")
    sites.check_job(_meta(deploy_map={"app": ["site-3"]}))
