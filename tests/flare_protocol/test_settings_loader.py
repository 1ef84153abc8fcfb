"""The one settings loader: the same suffix rule, type checks and messages on every side."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flare_protocol.errors import KitError
from flare_protocol.settings_loader import (
    check_settings,
    read_settings,
    setting,
    setting_keys,
    setting_metadata,
    unknown_setting_keys,
)

SOURCE = "/kit/local/settings.json"


@dataclass(frozen=True)
class Example:
    address: str = dataclasses.field(metadata=setting_metadata())
    not_a_setting: int = 0
    timeout: float = setting(5.0, seconds=True)
    ratio: float = setting(2.0)
    entries: int = setting(10)
    port: int | None = setting(None, low=0, high=65535)
    level: str = setting("INFO", choices=("DEBUG", "INFO"))
    folder: Path | None = setting(None)
    strict: bool = setting(False)


def _read(doc: dict[str, Any], section: str | None = "example") -> dict[str, Any]:
    return read_settings(Example, doc, source=SOURCE, section=section).values


def test_durations_alone_take_the_seconds_suffix() -> None:
    assert setting_keys(Example) == {
        "address", "timeout", "timeout_s", "ratio", "entries", "port", "level", "folder", "strict"
    }  # fmt: skip
    assert _read({"timeout_s": 3}) == {"timeout": 3.0}
    assert _read({"timeout": 4}) == {"timeout": 4.0}
    read = read_settings(Example, {"entries_s": 3, "ratio_s": 1}, source=SOURCE)
    assert read.values == {} and read.unknown == {"entries_s": 3, "ratio_s": 1}
    assert unknown_setting_keys(read.unknown, Example) == [
        "'entries_s' (did you mean 'entries'?)",
        "'ratio_s' (did you mean 'ratio'?)",
    ]


def test_fields_declared_without_setting_are_not_keys() -> None:
    read = read_settings(Example, {"not_a_setting": 1}, source=SOURCE)
    assert read.unknown == {"not_a_setting": 1}


def test_the_section_wins_over_the_top_level_and_its_unknown_keys_are_named() -> None:
    read = read_settings(
        Example,
        {"entries": 1, "example": {"entries": 2, "entires": 3}, "colour": "blue"},
        source=SOURCE,
        section="example",
    )
    assert read.values == {"entries": 2}
    assert unknown_setting_keys(read.unknown, Example, "example") == [
        "'colour'",
        "'entires' (did you mean 'entries'?)",
    ]


def test_values_are_normalised() -> None:
    values = _read({"level": "debug", "folder": "/x", "port": None, "strict": True, "ratio": 3})
    assert values == {"level": "DEBUG", "folder": Path("/x"), "port": None, "strict": True,
                      "ratio": 3.0}  # fmt: skip
    assert isinstance(values["ratio"], float)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"timeout": "soon"}, "'timeout' must be a number of seconds, got 'soon'"),
        ({"timeout_s": True}, "'timeout_s' must be a number of seconds, got True"),
        ({"timeout_s": 0}, "'timeout_s' must be positive, got 0"),
        ({"ratio": "high"}, "'ratio' must be a number, got 'high'"),
        ({"entries": 1.5}, "'entries' must be an integer, got 1.5"),
        ({"entries": -1}, "'entries' must be positive, got -1"),
        ({"port": 70000}, "'port' must be in 0..65535, got 70000"),
        ({"port": -1}, "'port' must be in 0..65535, got -1"),
        ({"port": "80"}, "'port' must be an integer or null, got '80'"),
        ({"level": "LOUD"}, "'level' must be one of DEBUG, INFO, got 'LOUD'"),
        ({"level": 3}, "'level' must be one of DEBUG, INFO, got 3"),
        ({"address": 3}, "'address' must be a string, got 3"),
        ({"folder": 3}, "'folder' must be a path string or null, got 3"),
        ({"strict": "yes"}, "'strict' must be true or false, got 'yes'"),
        ({"timeout": 1, "timeout_s": 2}, "give 'timeout' or 'timeout_s', not both"),
        ({"example": [1]}, "'example' must be an object of example settings, got [1]"),
        ({"example": {"entries": "x"}}, "'entries' must be an integer, got 'x'"),
    ],
)
def test_a_bad_value_is_refused_naming_the_file_the_key_and_the_expected_type(
    doc: dict[str, Any], message: str
) -> None:
    with pytest.raises(KitError) as info:
        _read(doc)
    assert str(info.value) == f"{SOURCE}: {message}"
    assert info.value.path == SOURCE  # type: ignore[attr-defined]


def test_a_built_object_is_checked_with_the_same_rules() -> None:
    check_settings(Example(address="x:1", port=0, folder=Path("/x")), source="flags")
    with pytest.raises(KitError, match=r"^flags: 'port' must be in 0\.\.65535, got 65536$"):
        check_settings(Example(address="x:1", port=65536), source="flags")
    with pytest.raises(KitError, match="'address' must be a string"):
        check_settings(Example(address=None), source="flags")  # type: ignore[arg-type]


def test_an_unsupported_field_type_is_a_bug_in_the_class() -> None:
    @dataclass(frozen=True)
    class Odd:
        items: list = setting(None)  # type: ignore[type-arg]

    with pytest.raises(TypeError, match="unsupported type"):
        read_settings(Odd, {"items": [1]}, source=SOURCE)


def test_a_list_of_strings_setting_takes_a_json_list_and_keeps_a_tuple_default() -> None:
    @dataclass(frozen=True)
    class Pip:
        options: tuple[str, ...] = setting(())

    assert read_settings(Pip, {"options": ["--no-index"]}, source="s.json").values == {
        "options": ("--no-index",)
    }
    check_settings(Pip(), source="s.json")  # the default passes its own check
    with pytest.raises(KitError, match="'options' must be a list of strings, got"):
        read_settings(Pip, {"options": "--no-index"}, source="s.json")
