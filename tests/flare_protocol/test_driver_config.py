"""config_fed_server.json with ``"workflow": "driver"``: its own keys, checked like the rest."""

from __future__ import annotations

import pytest

from flare_protocol.app_config import DriverConfig, parse_server_config
from flare_protocol.errors import InvalidJobDefinition


def test_a_driver_config_needs_no_rounds_and_fills_defaults():
    config = parse_server_config({"workflow": "driver"})
    assert config.workflow == "driver" and config.num_rounds == 0
    assert config.driver == DriverConfig()


def test_a_driver_config_takes_its_own_keys():
    config = parse_server_config(
        {
            "workflow": "driver",
            "driver_idle_timeout": 30,
            "default_ttl": 12.5,
            "max_message_bytes": 1000,
            "run_config": {"num-server-rounds": 3},
        }
    )
    assert config.driver == DriverConfig(30.0, 12.5, 1000, {"num-server-rounds": 3})


@pytest.mark.parametrize(
    "config, match",
    [
        ({"workflow": "driver", "num_rounds": 3}, "'num_rounds' is not used by workflow 'driver'"),
        ({"workflow": "driver", "fedopt": {}}, "'fedopt' is not used"),
        ({"workflow": "fedavg", "num_rounds": 2, "default_ttl": 5}, "only allowed with workflow"),
        ({"workflow": "driver", "default_ttl": 0}, "'default_ttl' must be > 0"),
        ({"workflow": "driver", "run_config": [1]}, "'run_config' must be of type object"),
        ({"workflow": "driver", "idle_timeout": 3}, "unknown field 'idle_timeout'"),
        ({"workflow": "fedavg"}, "missing required field 'num_rounds'"),
    ],
)
def test_driver_keys_are_checked_naming_the_field(config, match):
    with pytest.raises(InvalidJobDefinition, match=match):
        parse_server_config(config)
