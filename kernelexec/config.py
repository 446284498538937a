"""User-settable configuration: one frozen, validated value per pool and per environment.

Field names and defaults come from spec.json ``config_fields`` so the bridge, the CLI and
the Node-RED editor agree. Invalid input raises :class:`ConfigError` naming the field, the
value and what would be accepted.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ConfigError
from .protocol import load_spec

__all__ = ["EnvConfig", "PoolConfig"]

Mode = Literal["hot", "cold"]
MessagePath = Literal["lane", "jupyter"]


def _field_spec(name: str) -> dict[str, Any]:
    spec: dict[str, Any] = load_spec()["config_fields"][name]
    return spec


def _fail(name: str, value: Any, expected: str) -> ConfigError:
    msg = f"config.{name}: {value!r} is not valid; expected {expected}"
    return ConfigError(msg)


def _check_int(name: str, value: Any) -> int:
    spec = _field_spec(name)
    low, high = spec.get("min"), spec.get("max")
    expected = "an integer" + (f" >= {low}" if low is not None else "")
    expected += f" and <= {high}" if high is not None else ""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise _fail(name, value, expected)
    number = int(value)
    if (low is not None and number < low) or (high is not None and number > high):
        raise _fail(name, value, expected)
    return number


def _check_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise _fail(name, value, "a number of seconds >= 0 (0 = no limit)")
    if value < 0:
        raise _fail(name, value, "a number of seconds >= 0 (0 = no limit)")
    return float(value)


def _check_str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _fail(name, value, "a string")
    return value


@dataclass(frozen=True)
class EnvConfig:
    """Where and how a pool's kernels run (see docs/environments.md and docs/scale-out.md).

    ``python``: interpreter path (None: the bridge's own interpreter).
    ``requirements``: pip requirement lines; non-empty means a managed environment.
    ``memory_limit`` ("512M"), ``cpu_limit`` (CPUs, e.g. 0.5), ``network`` (False: no
    network), ``user`` (run kernels as this unprivileged user).
    ``gateway_url``/``gateway_token``: run kernels on a Jupyter Kernel/Enterprise Gateway.
    """

    python: str | None = None
    requirements: tuple[str, ...] = ()
    memory_limit: str | None = None
    cpu_limit: float | None = None
    network: bool = True
    user: str | None = None
    gateway_url: str | None = None
    gateway_token: str | None = field(default=None, repr=False)  # a secret: never in logs

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> EnvConfig:
        data = dict(data or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            msg = f"config.env: unknown option(s) {unknown}; known options are {sorted(known)}"
            raise ConfigError(msg)
        reqs = data.get("requirements") or ()
        if isinstance(reqs, str):
            reqs = [line for line in reqs.splitlines()]
        cleaned = tuple(r.strip() for r in reqs if r.strip() and not r.strip().startswith("#"))
        cpu = data.get("cpu_limit")
        if cpu is not None and (
            isinstance(cpu, bool) or not isinstance(cpu, (int, float)) or cpu <= 0
        ):
            raise _fail("env.cpu_limit", cpu, "a number of CPUs > 0, e.g. 0.5")
        local_only = [name for name in ("python", "requirements", "user") if data.get(name)]
        if data.get("network") is False:
            local_only.append("network")
        if data.get("gateway_url") and local_only:
            msg = (
                f"config.env: {', '.join(local_only)} apply to kernels on this machine, not to "
                "kernels on a gateway (gateway_url is set); choose the gateway's kernel image "
                "and limits instead (docs/scale-out.md), or remove gateway_url"
            )
            raise ConfigError(msg)
        return cls(
            python=data.get("python") or None,
            requirements=cleaned,
            memory_limit=data.get("memory_limit") or None,
            cpu_limit=float(cpu) if cpu is not None else None,
            network=bool(data.get("network", True)),
            user=data.get("user") or None,
            gateway_url=data.get("gateway_url") or None,
            gateway_token=data.get("gateway_token") or None,
        )

    @property
    def is_local_only(self) -> bool:
        """Options that only kernels on this machine can honour."""
        return bool(self.python or self.requirements or not self.network or self.user)

    @property
    def is_isolated(self) -> bool:
        return bool(self.memory_limit or self.cpu_limit or not self.network or self.user)


@dataclass(frozen=True)
class PoolConfig:
    """Everything that defines one node's pool. Two nodes share nothing by accident."""

    node_id: str
    name: str = ""
    code: str = "return msg"
    setup: str = ""
    stop: str = ""
    outputs: int = 1
    mode: Mode = "hot"
    workers: int = 1
    timeout: float = 0.0
    queue_limit: int = 1000
    keep_order: bool = False
    env: EnvConfig = field(default_factory=EnvConfig)
    workdir: str = ""
    notebook: str = ""
    message_path: MessagePath = "lane"
    #: the node's answer socket ({path, token}: the hello's ``answers``, kernel/answers.py):
    #: set by the bridge's session for its own client's pools, not a config field
    answers: dict[str, str] | None = field(default=None, repr=False)

    @classmethod
    def from_dict(cls, node_id: str, data: dict[str, Any]) -> PoolConfig:
        """Validate a protocol ``config`` object (missing fields take the spec's defaults)."""
        if not isinstance(node_id, str) or not node_id:
            raise _fail("node_id", node_id, "a non-empty string")
        fields = load_spec()["config_fields"]
        unknown = sorted(set(data) - set(fields))
        if unknown:
            msg = f"config: unknown field(s) {unknown}; known fields are {sorted(fields)}"
            raise ConfigError(msg)
        values = {name: data.get(name, spec["default"]) for name, spec in fields.items()}
        mode = values["mode"]
        if mode not in ("hot", "cold"):
            raise _fail("mode", mode, "'hot' or 'cold'")
        if values["message_path"] not in ("lane", "jupyter"):
            raise _fail("message_path", values["message_path"], "'lane' or 'jupyter'")
        if not isinstance(values["keep_order"], bool):
            raise _fail("keep_order", values["keep_order"], "true or false")
        if not isinstance(values["env"], dict):
            raise _fail("env", values["env"], "an object")
        return cls(
            node_id=node_id,
            name=_check_str("name", values["name"]),
            code=_check_str("code", values["code"]),
            setup=_check_str("setup", values["setup"]),
            stop=_check_str("stop", values["stop"]),
            outputs=_check_int("outputs", values["outputs"]),
            mode=mode,
            workers=_check_int("workers", values["workers"]),
            timeout=_check_number("timeout", values["timeout"]),
            queue_limit=_check_int("queue_limit", values["queue_limit"]),
            keep_order=values["keep_order"],
            env=EnvConfig.from_dict(values["env"]),
            workdir=_check_str("workdir", values["workdir"]),
            notebook=_check_str("notebook", values["notebook"]),
            message_path=values["message_path"],
        )

    def replace(self, **changes: Any) -> PoolConfig:
        return dataclasses.replace(self, **changes)
