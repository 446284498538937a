"""Pool and environment configuration: defaults from spec.json, clear errors for bad values."""

from __future__ import annotations

from typing import Any

import pytest

from kernelexec.config import EnvConfig, PoolConfig
from kernelexec.errors import ConfigError
from kernelexec.protocol import load_spec


def test_defaults_come_from_the_spec() -> None:
    config = PoolConfig.from_dict("n", {})
    for name, field in load_spec()["config_fields"].items():
        value = getattr(config, name)
        if name == "env":
            assert value == EnvConfig()
        else:
            assert value == field["default"], name


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"outputs": -1}, "config.outputs: -1 is not valid; expected an integer >= 0"),
        ({"workers": 0}, "config.workers: 0"),
        ({"workers": 2.5}, "config.workers: 2.5"),
        ({"timeout": -3}, "config.timeout: -3"),
        ({"timeout": "soon"}, "config.timeout: 'soon'"),
        ({"mode": "warm"}, "config.mode: 'warm' is not valid; expected 'hot' or 'cold'"),
        ({"keep_order": "yes"}, "config.keep_order: 'yes'"),
        ({"code": 42}, "config.code: 42 is not valid; expected a string"),
        ({"colour": "red"}, "unknown field(s) ['colour']"),
        ({"env": {"pyhton": "/usr/bin/python3"}}, "config.env: unknown option(s) ['pyhton']"),
        ({"env": {"cpu_limit": 0}}, "config.env.cpu_limit: 0"),
        (
            {"env": {"gateway_url": "http://gw:8888", "requirements": "numpy"}},
            "requirements apply to kernels on this machine",
        ),
    ],
)
def test_bad_values_say_which_field_which_value_and_what_is_expected(
    fields: dict[str, Any], says: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        PoolConfig.from_dict("n", fields)
    assert says in caught.value.message
    assert caught.value.to_dict()["code"] == "BAD_CONFIG"


def test_requirements_accept_lines_with_comments() -> None:
    env = EnvConfig.from_dict({"requirements": "numpy>=1.26\n\n# plotting\nmatplotlib\n"})
    assert env.requirements == ("numpy>=1.26", "matplotlib")
    assert env.is_local_only and not env.is_isolated


def test_an_empty_node_id_is_refused() -> None:
    with pytest.raises(ConfigError, match="node_id"):
        PoolConfig.from_dict("", {})
