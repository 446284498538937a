"""Where a node's kernels run: interpreter, managed virtual environment, sandbox, working dir.

The worker calls :func:`prepare_launch` once per pool (at deploy); it returns the
:class:`~kernelexec.handles.base.LaunchSpec` every kernel of the pool, and every restart,
starts from. See docs/environments.md for each option and what the host must allow.

Managed environments (``env.requirements`` non-empty) are virtual environments holding
ipykernel and the requirements, built with ``uv`` when it is available (else ``python -m venv``
and pip), keyed by the interpreter and the normalized requirements, stored in
:func:`env_root` and shared by every node and restart that asks for the same.

Modules: :mod:`.paths` (directories), :mod:`.subprocesses` (running tools),
:mod:`.interpreter`, :mod:`.installer` (one venv), :mod:`.managed` (the shared store),
:mod:`.launch` (the LaunchSpec, with the sandbox of :mod:`kernelexec.sandbox`).
"""

from __future__ import annotations

from .installer import INSTALLER_VAR, find_uv
from .interpreter import IPYKERNEL_REQUIREMENT, Interpreter, check_interpreter, inspect_interpreter
from .launch import (
    KERNEL_MODULE,
    PREFLIGHT_TIMEOUT,
    RUNTIME_DIR_VAR,
    explain_death,
    prepare_launch,
    release_kernel,
)
from .managed import (
    ENV_FORMAT,
    MARKER,
    EnvInfo,
    ensure_env,
    env_key,
    list_envs,
    normalize_requirements,
    remove_env,
)
from .paths import (
    ENV_DIR_VAR,
    WORK_DIR_VAR,
    env_root,
    node_workdir,
    remove_workdir,
    work_root,
)
from .subprocesses import Progress

__all__ = [
    "ENV_DIR_VAR",
    "ENV_FORMAT",
    "INSTALLER_VAR",
    "IPYKERNEL_REQUIREMENT",
    "KERNEL_MODULE",
    "MARKER",
    "PREFLIGHT_TIMEOUT",
    "RUNTIME_DIR_VAR",
    "WORK_DIR_VAR",
    "EnvInfo",
    "Interpreter",
    "Progress",
    "check_interpreter",
    "ensure_env",
    "env_key",
    "env_root",
    "explain_death",
    "find_uv",
    "inspect_interpreter",
    "list_envs",
    "node_workdir",
    "normalize_requirements",
    "prepare_launch",
    "release_kernel",
    "remove_env",
    "remove_workdir",
    "work_root",
]
