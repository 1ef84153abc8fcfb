"""The Scaleout-shaped APIClient view over a real server and real sites: the model trail
and validations of a finished session (job), downloads by model id, and start_session
with FedOpt from a chosen model, with a Scaleout-style command package."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flare_admin.compat.scaleout import APIClient, parse_model_id
from flare_protocol.errors import InvalidArgumentError
from flare_protocol.models import load_params
from tests.e2e.jobs_helpers import SITES, Cluster

pytestmark = pytest.mark.timeout(180)

PACKAGE = Path(__file__).resolve().parents[2] / "examples" / "hello-numpy-command" / "app"


@pytest.fixture(scope="module")
def view(provisioned, tmp_path_factory):
    """A cluster, an APIClient with the package active, and a finished 2-round session."""
    with Cluster(provisioned, tmp_path_factory.mktemp("scaleout")) as cluster:
        client = APIClient(cluster.session, package=PACKAGE)
        started = client.start_session("first", rounds=2, min_clients=2, round_timeout=60)
        assert started["success"] is True
        job = started["session_id"]
        assert cluster.wait_done(job)["status"] == "FINISHED:COMPLETED"
        yield cluster, client, job


def test_the_model_trail_and_validations_of_a_finished_session(view):
    cluster, client, job = view
    models = client.get_models(session_id=job)
    assert models["count"] == 2
    assert [m["model_id"] for m in models["result"]] == [f"{job}:2", f"{job}:1"]
    assert [m["parent_model"] for m in models["result"]] == [f"{job}:1", None]
    assert models["result"][0]["final"] is True

    trail = client.get_model_trail(f"{job}:2")
    assert [m["id"] for m in trail] == [f"{job}:1", f"{job}:2"]
    assert [m["id"] for m in client.get_model_trail(f"{job}:2", reverse=False)] == [
        f"{job}:2",
        f"{job}:1",
    ]
    assert [m["id"] for m in client.get_model_trail(f"{job}:2", include_self=False)] == [f"{job}:1"]

    validations = client.get_validations(model_id=f"{job}:2")
    assert validations["count"] == len(SITES)
    expected = {
        v.site: dict(v.metrics) for v in cluster.session.get_validations(job) if v.round == 2
    }
    for v in validations["result"]:
        assert v["model_id"] == f"{job}:2" and v["session_id"] == job
        assert json.loads(v["data"]) == v["metrics"] == expected[v["sender"]["name"]]
    assert client.get_validations(session_id=job, sender_name="site-1")["count"] == 2

    session = client.get_session(job)
    assert session["status"] == "Finished" and client.session_is_finished(job)
    assert session["session_config"]["aggregator"] == "fedavg"
    assert session["session_config"]["rounds"] == 2
    rounds = client.get_rounds(session_id=job)["result"]
    assert [r["round"] for r in rounds] == [2, 1]
    summary = cluster.session.get_job_summary(job)
    assert rounds[1]["round_data"]["participants"] == summary["rounds"][0]["participants"]


def test_download_model_saves_the_rounds_global_model(view, tmp_path):
    cluster, client, job = view
    reply = client.download_model(f"{job}:1", tmp_path / "m1.npz")
    assert reply["success"] is True
    got = load_params(tmp_path / "m1.npz")
    want = load_params(cluster.result_dir(job) / "models" / "round_001.npz")
    assert set(got) == set(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])


def test_clients_controller_and_bad_ids(view):
    _, client, job = view
    clients = client.get_clients()
    assert sorted(c["name"] for c in clients["result"]) == list(SITES)
    assert {c["status"] for c in clients["result"]} == {"online"}
    assert client.get_controller_status()["state"] in ("idle", "instructing")
    assert parse_model_id(f"{job}:2") == (job, 2)
    with pytest.raises(InvalidArgumentError, match="'<job_id>:<round>'"):
        client.get_model("seed")
    with pytest.raises(InvalidArgumentError, match="completed 2 round"):
        client.get_model(f"{job}:9")


def test_start_session_with_fedopt_continues_from_the_chosen_model(view):
    cluster, client, first = view
    started = client.start_session(
        "second",
        rounds=2,
        aggregator="fedopt",
        aggregator_kwargs={"serveropt": "adam", "learning_rate": 0.5, "tau": 1e-3},
        model_id=f"{first}:2",
        min_clients=2,
        round_timeout=60,
    )
    second = started["session_id"]
    meta = cluster.wait_done(second)
    assert meta["status"] == "FINISHED:COMPLETED", meta
    assert meta["initial_model_job_id"] == first  # a final model: the server reads it
    assert cluster.session.get_job_summary(second)["workflow"] == "fedopt"
    assert [m["id"] for m in client.get_model_trail(f"{second}:2")] == [
        f"{first}:1",
        f"{first}:2",
        f"{second}:1",
        f"{second}:2",
    ]

    # An earlier round's model travels inside the job; the trail still knows where from.
    third = client.start_session(
        "third", rounds=1, model_id=f"{first}:1", min_clients=2, round_timeout=60
    )["session_id"]
    assert cluster.wait_done(third)["status"] == "FINISHED:COMPLETED"
    assert [m["id"] for m in client.get_model_trail(f"{third}:1")] == [
        f"{first}:1",
        f"{third}:1",
    ]
    assert client.get_session(third)["session_config"]["model_id"] == f"{first}:1"


def test_start_session_refuses_what_it_cannot_do_naming_the_fix(view, tmp_path):
    cluster, client, first = view
    with pytest.raises(InvalidArgumentError, match="did you mean 'learning_rate'"):
        client.start_session(aggregator="fedopt", aggregator_kwargs={"learning_rat": 0.1})
    with pytest.raises(InvalidArgumentError, match="'fedavg' or 'fedopt'"):
        client.start_session(aggregator="fedprox")
    with pytest.raises(InvalidArgumentError, match="no user code runs on the server"):
        client.start_session(server_functions=object())
    with pytest.raises(InvalidArgumentError, match="numpyhelper"):
        client.start_session(helper="pytorchhelper")
    with pytest.raises(InvalidArgumentError, match="set_active_package"):
        APIClient(cluster.session).start_session()
