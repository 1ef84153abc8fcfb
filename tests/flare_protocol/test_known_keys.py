"""Unknown keys named with the closest known key (meta.json, server and site settings)."""

from __future__ import annotations

from flare_protocol.known_keys import closest_key, unknown_keys

KNOWN = {"min_clients", "mandatory_clients", "deploy_map", "resource_spec"}


def test_a_typo_is_named_with_the_key_it_resembles():
    assert unknown_keys(["min_client"], KNOWN) == ["'min_client' (did you mean 'min_clients'?)"]


def test_known_keys_are_not_named_and_order_is_kept():
    assert unknown_keys(["zzz", "deploy_map", "resource_specs"], KNOWN) == [
        "'zzz'",
        "'resource_specs' (did you mean 'resource_spec'?)",
    ]


def test_nothing_is_suggested_when_nothing_is_close():
    assert closest_key("colour", KNOWN) is None
    assert closest_key("deploymap", KNOWN) == "deploy_map"
    assert unknown_keys([], KNOWN) == []
