"""Every error kernelexec raises, as one tree. Each carries a stable ``code`` from spec.json.

    KernelexecError
    ├── ConfigError           BAD_CONFIG       invalid pool or environment option
    ├── QueueFullError        QUEUE_FULL       queue at queue_limit, message refused
    ├── ExecutionError                         the message could not produce a result
    │   ├── UserCodeError     USER_ERROR       the node's code raised
    │   │   └── NodeApiError  USER_ERROR       the node API refused a call of the code
    │   ├── CodeSyntaxError   SYNTAX_ERROR     the node's code does not compile
    │   ├── ExecutionTimeoutError  TIMEOUT          ran longer than the timeout
    │   ├── KernelDiedError   KERNEL_DIED      the kernel process died
    │   └── ConversionError   CONVERSION_ERROR a value cannot cross to/from JSON
    ├── SetupError            SETUP_FAILED     setup code raised
    ├── PoolClosedError       POOL_CLOSED      the pool closed under the message
    ├── EnvironmentBuildError ENV_FAILED       environment or isolation unavailable
    ├── GatewayError          GATEWAY_ERROR    a Jupyter gateway failed us
    └── (outside errors.py, each beside the code that raises it)
        FrameError            BAD_FRAME and the other frame codes (server/frames.py)
        BlobError             CONVERSION_ERROR a blob file or reference not ours (kernel/blobs.py)
        SandboxError          ENV_FAILED       the sandbox wrapper cannot apply an option
        GatewayNotFoundError  GATEWAY_ERROR    HTTP 404 from a gateway (handles/gateway/rest.py)
        AttachError           BRIDGE_FAILED    ``kernelexec attach`` finds no bridge or kernel
        NodeCodeError         (the node's code) ``%%node`` shows the code's own error
        ContextAccessError, LinkCallError, LinkCallTimeout: NodeApiError (kernel/nodeapi.py;
                              LinkCallTimeout keeps the name the user guide gives it)

Two exceptions stay outside on purpose: guard.MessageTimeout is a BaseException like
KeyboardInterrupt, so that the node's ``except Exception`` cannot swallow its timeout, and
convert._Unsendable is a private signal between two functions of one module.

Messages say what went wrong, with which value, and what to do.
"""

from __future__ import annotations

from typing import Any, TypedDict

__all__ = [
    "CodeSyntaxError",
    "ConfigError",
    "ConversionError",
    "EnvironmentBuildError",
    "ErrorObject",
    "ExecutionError",
    "ExecutionTimeoutError",
    "GatewayError",
    "KernelDiedError",
    "KernelexecError",
    "NodeApiError",
    "PoolClosedError",
    "QueueFullError",
    "SetupError",
    "UserCodeError",
    "error_from_dict",
    "own_error",
]


class ErrorObject(TypedDict):
    """The protocol's error object (spec.json ``error_object``): what every error becomes on
    the wire, built by :meth:`KernelexecError.to_dict` (and server/frames.error_object)."""

    code: str
    type: str
    message: str
    traceback: str | None
    line: int | None


class KernelexecError(Exception):
    """Base of every kernelexec error; ``to_dict`` gives the protocol's error object."""

    #: the spec.json error code; a class sets its own, FrameError sets one per instance
    code: str = "INTERNAL"

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

    def to_dict(self) -> ErrorObject:
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

    @classmethod
    def check(cls, node_id: str, waiting: int, limit: int, for_what: str) -> QueueFullError | None:
        """The refusal of one more message when ``waiting`` already wait ``for_what`` (a
        worker, the pool's start) and the node's queue_limit is ``limit``; else None. The
        one place the limit is checked and said (the pool's queue, the bridge's wait for a
        pool that is starting)."""
        if waiting < limit:
            return None
        return cls(
            f"queue full: {waiting} messages are waiting for {for_what} of node {node_id} "
            f"(queueLimit {limit}); the message was refused. Raise queueLimit or workers, "
            "or slow the input down."
        )


class ExecutionError(KernelexecError):
    code = "USER_ERROR"


class UserCodeError(ExecutionError):
    code = "USER_ERROR"


class NodeApiError(UserCodeError, RuntimeError):
    """Raised into the node's code by the node API (a refused context key, a failed link
    call). The code may catch it; uncaught, it is the code's own error, reported with the
    code's traceback like any other (the runtime does not take it for one of its own)."""


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


def own_error(exc: object) -> KernelexecError | None:
    """``exc`` if kernelexec reports it as itself (``to_dict``), None if it is the node code's
    error: a NodeApiError the code did not catch is the code's own, traceback and all."""
    if isinstance(exc, KernelexecError) and not isinstance(exc, NodeApiError):
        return exc
    return None


def error_from_dict(data: dict[str, Any]) -> KernelexecError:
    """Rebuild an exception from a protocol error object."""
    cls = _BY_CODE.get(str(data.get("code")), KernelexecError)
    return cls(
        str(data.get("message", "")),
        type_name=data.get("type"),
        traceback=data.get("traceback"),
        line=data.get("line"),
    )
