"""meta.json schema and job-folder checks (flare_protocol.job_format)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from jobzip_helpers import valid_job_files

from flare_protocol.errors import InvalidJobDefinition
from flare_protocol.job_format import (
    META_KEYS,
    SERVER_OWNED_KEYS,
    meta_schema,
    path_problem,
    validate_job_files,
    validate_job_folder,
    validate_meta,
)

BASE = {"name": "hello-numpy", "deploy_map": {"app": ["@ALL"]}}


def meta_error(data: object) -> str:
    with pytest.raises(InvalidJobDefinition) as info:
        validate_meta(data)
    return str(info.value)


def files_error(files: dict[str, bytes]) -> str:
    with pytest.raises(InvalidJobDefinition) as info:
        validate_job_files(files.keys(), files.get)
    return str(info.value)


def test_schema_is_draft_2020_12() -> None:
    from jsonschema import Draft202012Validator

    Draft202012Validator.check_schema(meta_schema())
    assert meta_schema()["$schema"].endswith("2020-12/schema")


def test_valid_meta_gets_defaults_and_keeps_nvidia_flares_other_keys() -> None:
    extra = {
        "custom_props": {"x": 1},
        "scope": "private",
        "launcher_spec": {"site-1": {"docker": {}}},
        "job_folder_name": "hello",
    }
    meta = validate_meta({**BASE, **extra})
    assert meta["min_clients"] == 1
    assert meta["resource_spec"] == {} and meta["mandatory_clients"] == []
    assert {k: meta[k] for k in extra} == extra


def test_an_unknown_key_is_refused_naming_the_closest_known_key() -> None:
    assert meta_error({**BASE, "min_client": 2}) == (
        "meta.json: unknown key 'min_client' (did you mean 'min_clients'?); known keys: "
        "custom_props, deploy_map, job_folder_name, launcher_spec, mandatory_clients, "
        "min_clients, name, resource_spec, scope"
    )
    assert meta_error({**BASE, "zzz": 1, "resource_specs": {}}).startswith(
        "meta.json: unknown keys 'zzz', 'resource_specs' (did you mean 'resource_spec'?); "
    )


@pytest.mark.parametrize("key", sorted(SERVER_OWNED_KEYS))
def test_every_key_the_server_owns_is_refused_naming_it(key: str) -> None:
    error = meta_error({**BASE, key: None})
    assert error.startswith(f"meta.json: key {key!r} is set by the server, not by a job")


def test_a_model_source_in_meta_json_points_to_the_submit_argument() -> None:
    error = meta_error({**BASE, "initial_model_job_id": "3f2c1b9e-0000-4000-8000-000000000000"})
    assert "pass initial_model_job_id to submit_job or clone_job" in error


def test_user_keys_and_server_owned_keys_do_not_overlap() -> None:
    assert not META_KEYS & SERVER_OWNED_KEYS
    schema_keys = set(meta_schema()["properties"])
    assert schema_keys == META_KEYS and meta_schema()["additionalProperties"] is False


def test_min_clients_not_an_integer_names_file_field_and_value() -> None:
    assert meta_error({**BASE, "min_clients": "two"}) == (
        "meta.json: field 'min_clients' must be an integer >= 1, got \"two\""
    )


@pytest.mark.parametrize("value", [0, -1, 1.5, True, None])
def test_min_clients_out_of_range_is_refused(value: object) -> None:
    assert "field 'min_clients' must be an integer >= 1" in meta_error(
        {**BASE, "min_clients": value}
    )


def test_min_clients_above_named_sites_is_refused() -> None:
    message = meta_error({**BASE, "deploy_map": {"app": ["site-1"]}, "min_clients": 2})
    assert "field 'min_clients' is 2 but deploy_map names only 1 site(s)" in message


@pytest.mark.parametrize("name", ["", " lead", "a/b", "x" * 129, "../etc", 7])
def test_bad_name_is_refused(name: object) -> None:
    assert meta_error({**BASE, "name": name}).startswith(
        "meta.json: field 'name' must be a job name"
    )


def test_missing_name_is_refused() -> None:
    assert meta_error({"deploy_map": {"app": ["@ALL"]}}) == "meta.json: field 'name' is required"


def test_missing_deploy_map_is_refused() -> None:
    assert meta_error({"name": "x"}) == "meta.json: field 'deploy_map' is required"


@pytest.mark.parametrize("deploy_map", [{}, [], "app", {"app": "@ALL"}])
def test_deploy_map_of_wrong_shape_is_refused(deploy_map: object) -> None:
    assert "field 'deploy_map" in meta_error({**BASE, "deploy_map": deploy_map})


@pytest.mark.parametrize("app", ["../app", "a b", ".hidden", "a/b", ""])
def test_bad_app_name_is_refused(app: str) -> None:
    message = meta_error({**BASE, "deploy_map": {app: ["@ALL"]}})
    assert "field 'deploy_map' has key" in message and "app name" in message


@pytest.mark.parametrize("target", ["site 1", "", "../x", 3])
def test_bad_target_is_refused(target: object) -> None:
    message = meta_error({**BASE, "deploy_map": {"app": [target]}})
    assert message.startswith("meta.json: field 'deploy_map.app[0]' must be a site name")


def test_duplicate_target_is_refused() -> None:
    assert "distinct targets" in meta_error({**BASE, "deploy_map": {"app": ["s1", "s1"]}})


def test_resource_spec_must_map_sites_to_objects() -> None:
    assert "field 'resource_spec'" in meta_error({**BASE, "resource_spec": []})
    assert "field 'resource_spec.site-1'" in meta_error({**BASE, "resource_spec": {"site-1": 2}})


def test_mandatory_clients_must_be_site_names() -> None:
    assert "field 'mandatory_clients'" in meta_error({**BASE, "mandatory_clients": "site-1"})
    assert "field 'mandatory_clients[0]'" in meta_error({**BASE, "mandatory_clients": ["a b"]})


@pytest.mark.parametrize("data", [[], "x", 3, None])
def test_meta_that_is_not_an_object_is_refused(data: object) -> None:
    assert meta_error(data).startswith("meta.json: must be a JSON object")


def test_meta_json_that_is_not_json_names_line_and_column() -> None:
    files = {**valid_job_files(), "meta.json": b'{"name": "x",\n oops}'}
    assert files_error(files).startswith("meta.json: not valid JSON: ")
    assert "line 2" in files_error(files)


def test_meta_json_with_duplicate_key_is_refused() -> None:
    files = {**valid_job_files(), "meta.json": b'{"name": "a", "name": "b"}'}
    assert files_error(files) == "meta.json: duplicate key 'name'"


def test_meta_json_with_nan_is_refused() -> None:
    files = {**valid_job_files(), "meta.json": b'{"name": "a", "min_clients": NaN}'}
    assert files_error(files) == "meta.json: NaN is not valid JSON"


def test_meta_json_not_utf8_is_refused() -> None:
    files = {**valid_job_files(), "meta.json": b'{"name": "\xff"}'}
    assert files_error(files).startswith("meta.json: not UTF-8 text")


def test_missing_meta_json_is_refused() -> None:
    files = valid_job_files()
    del files["meta.json"]
    assert files_error(files).startswith("meta.json: missing")


def test_deploy_map_app_without_folder_is_refused() -> None:
    files = valid_job_files({"deploy_map": {"app": ["@ALL"], "other": ["site-1"]}})
    assert "names app 'other' but the job has no folder 'other/'" in files_error(files)


def test_app_configs_are_checked_through_the_seam() -> None:
    files = valid_job_files()
    del files["app/config/config_fed_server.json"]
    assert files_error(files).startswith("app/config/config_fed_server.json: missing")


def test_app_deployed_only_to_sites_needs_no_server_config() -> None:
    files = valid_job_files({"deploy_map": {"app": ["site-1"]}})
    del files["app/config/config_fed_server.json"]
    definition = validate_job_files(files.keys(), files.get)
    assert definition.apps == ("app",) and definition.entries == 3


@pytest.mark.parametrize(
    "name",
    ["../x", "a/../b", "/etc/passwd", "C:/x", "a\\b", "a\x00b", "a\x1fb", "a//b", "./a", ""],
)
def test_unsafe_relative_paths_are_named(name: str) -> None:
    assert path_problem(name) is not None


def test_safe_relative_paths_pass() -> None:
    assert path_problem("app/config/config_fed_client.json") is None
    assert path_problem("app/custom/") is None


def write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root


def test_job_folder_validates(tmp_path: Path) -> None:
    job = write_folder(tmp_path / "job", valid_job_files())
    definition = validate_job_folder(job)
    assert definition.meta["name"] == "hello-numpy"
    assert definition.entries == 4
    assert definition.uncompressed_bytes == sum(len(v) for v in valid_job_files().values())


def test_job_folder_symlink_leaving_the_folder_is_refused(tmp_path: Path) -> None:
    job = write_folder(tmp_path / "job", valid_job_files())
    (tmp_path / "secret").write_text("x")
    (job / "app" / "custom" / "leak.txt").symlink_to(tmp_path / "secret")
    with pytest.raises(InvalidJobDefinition, match="leak.txt' is a symlink that leaves"):
        validate_job_folder(job)


def test_job_folder_symlink_inside_is_read_through(tmp_path: Path) -> None:
    job = write_folder(tmp_path / "job", valid_job_files())
    (job / "app" / "custom" / "alias.py").symlink_to(job / "app" / "custom" / "train.py")
    assert "app/custom/alias.py" in validate_job_folder(job).files


def test_job_folder_fifo_is_refused(tmp_path: Path) -> None:
    job = write_folder(tmp_path / "job", valid_job_files())
    os.mkfifo(job / "app" / "pipe")
    with pytest.raises(InvalidJobDefinition, match="'app/pipe' is not a regular file"):
        validate_job_folder(job)


def test_job_folder_symlinked_directory_is_refused(tmp_path: Path) -> None:
    job = write_folder(tmp_path / "job", valid_job_files())
    (job / "app" / "linked").symlink_to(job / "app" / "custom")
    with pytest.raises(InvalidJobDefinition, match="symlinked directory"):
        validate_job_folder(job)


def test_job_folder_bad_meta_names_the_file(tmp_path: Path) -> None:
    job = write_folder(tmp_path / "job", valid_job_files())
    (job / "meta.json").write_text(json.dumps({**BASE, "min_clients": "two"}))
    with pytest.raises(InvalidJobDefinition, match="meta.json: field 'min_clients'"):
        validate_job_folder(job)


def test_not_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidJobDefinition, match="not a folder"):
        validate_job_folder(tmp_path / "nope")
