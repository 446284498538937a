"""Every error kernelexec raises, as one tree. Each carries a stable ``code`` from spec.json.

    KernelexecError
    ├── ConfigError           BAD_CONFIG       invalid pool or environment option
    ├── QueueFullError        QUEUE_FULL       queue at queue_limit, message refused
    ├── ExecutionError                         the message could not produce a result
    │   ├── UserCodeError     USER_ERROR       the node's code raised
    │   ├── CodeSyntaxError   SYNTAX_ERROR     the node's code does not compile
    │   ├── ExecutionTimeoutError  TIMEOUT          ran longer than the timeout
    │   ├── KernelDiedError   KERNEL_DIED      the kernel process died
    │   └── ConversionError   CONVERSION_ERROR a value cannot cross to/from JSON
    ├── SetupError            SETUP_FAILED     setup code raised
    ├── PoolClosedError       POOL_CLOSED      the pool closed under the message
    ├── EnvironmentBuildError ENV_FAILED       environment or isolation unavailable
    └── GatewayError          GATEWAY_ERROR    a Jupyter gateway failed us

Messages say what went wrong, with which value, and what to do.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "CodeSyntaxError",
    "ConfigError",
    "ConversionError",
    "EnvironmentBuildError",
    "ExecutionError",
    "ExecutionTimeoutError",
    "GatewayError",
    "KernelDiedError",
    "KernelexecError",
    "PoolClosedError",
    "QueueFullError",
    "SetupError",
    "UserCodeError",
    "error_from_dict",
]


class KernelexecError(Exception):
    """Base of every kernelexec error; ``to_dict`` gives the protocol's error object."""

    code: ClassVar[str] = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        type_name: str | None = None,
        traceback: str | None = None,
        line: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.type_name = type_name or type(self).__name__
        self.traceback = traceback
        self.line = line

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "type": self.type_name,
            "message": self.message,
            "traceback": self.traceback,
            "line": self.line,
        }


class ConfigError(KernelexecError, ValueError):
    code = "BAD_CONFIG"


class QueueFullError(KernelexecError):
    code = "QUEUE_FULL"


class ExecutionError(KernelexecError):
    code = "USER_ERROR"


class UserCodeError(ExecutionError):
    code = "USER_ERROR"


class CodeSyntaxError(ExecutionError):
    code = "SYNTAX_ERROR"


class ExecutionTimeoutError(ExecutionError):
    """The code ran past its timeout. ``kernel_stuck``: it did not stop when interrupted
    either, so its kernel must be replaced (the worker reads this flag, never the text)."""

    code = "TIMEOUT"

    def __init__(self, message: str, *, kernel_stuck: bool = False, **details: Any) -> None:
        super().__init__(message, **details)
        self.kernel_stuck = kernel_stuck


class KernelDiedError(ExecutionError):
    code = "KERNEL_DIED"


class ConversionError(ExecutionError):
    code = "CONVERSION_ERROR"


class SetupError(KernelexecError):
    code = "SETUP_FAILED"


class PoolClosedError(KernelexecError):
    code = "POOL_CLOSED"


class EnvironmentBuildError(KernelexecError):
    code = "ENV_FAILED"


class GatewayError(KernelexecError):
    code = "GATEWAY_ERROR"


_BY_CODE: dict[str, type[KernelexecError]] = {
    cls.code: cls
    for cls in (
        ConfigError,
        QueueFullError,
        UserCodeError,
        CodeSyntaxError,
        ExecutionTimeoutError,
        KernelDiedError,
        ConversionError,
        SetupError,
        PoolClosedError,
        EnvironmentBuildError,
        GatewayError,
    )
}


def error_from_dict(data: dict[str, Any]) -> KernelexecError:
    """Rebuild an exception from a protocol error object."""
    cls = _BY_CODE.get(str(data.get("code")), KernelexecError)
    return cls(
        str(data.get("message", "")),
        type_name=data.get("type"),
        traceback=data.get("traceback"),
        line=data.get("line"),
    )
