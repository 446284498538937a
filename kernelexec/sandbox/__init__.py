"""Isolation for one kernel process, without Docker: cgroups, a network namespace, rlimits, setuid.

Two halves (see docs/environments.md):

* **bridge side** (:mod:`.plan`): :func:`plan_sandbox` probes what the host allows, creates
  the pool's cgroup directories (:mod:`.cgroups`) and returns a :class:`Sandbox` whose
  :meth:`Sandbox.wrap` turns the kernel command into
  ``python -m kernelexec.sandbox OPTIONS -- KERNEL COMMAND``; :func:`explain_death` and
  :func:`release_kernel` look at one kernel's cgroup after it is gone.
* **kernel side** (:mod:`.wrapper`, run by ``__main__``): :func:`main`, the wrapper. It runs
  in the kernel's process (same pid as the kernel: it ends with ``exec``): it makes a cgroup
  ``k<pid>`` under each ``--cgroup`` directory and moves itself in, applies rlimits, enters a
  new network namespace with only loopback up, hands the connection file to the kernel
  user (through fds: nothing by path in the user's directory), drops to that user (no
  capabilities, an allow-listed environment), then execs. With a root bridge every fence
  needs a user: a root kernel would leave it (docs/security.md, "Sandbox as root").

Every module of this package imports the standard library only: the wrapper runs before any
kernel code and must work with whatever interpreter the bridge runs.
"""

from __future__ import annotations

from .cgroups import (
    CGROUP_ROOT_VAR,
    CgroupDir,
    find_controller,
    make_cgroup_dirs,
    pid_alive,
    remove_cgroup_dirs,
    sweep_stale_cgroups,
)
from .plan import (
    MIN_RLIMIT_AS,
    WRAPPER_MODULE,
    Sandbox,
    check_user,
    explain_death,
    kernel_cgroups,
    parse_memory,
    plan_sandbox,
    release_kernel,
    user_uid,
)
from .wrapper import (
    ENV_ALLOWED,
    ENV_ALLOWED_PREFIXES,
    EXIT_SANDBOX_FAILED,
    SandboxError,
    allowed_environment,
    apply,
    main,
)

__all__ = [
    "CGROUP_ROOT_VAR",
    "ENV_ALLOWED",
    "ENV_ALLOWED_PREFIXES",
    "EXIT_SANDBOX_FAILED",
    "MIN_RLIMIT_AS",
    "WRAPPER_MODULE",
    "CgroupDir",
    "Sandbox",
    "SandboxError",
    "allowed_environment",
    "apply",
    "check_user",
    "explain_death",
    "find_controller",
    "kernel_cgroups",
    "main",
    "make_cgroup_dirs",
    "parse_memory",
    "pid_alive",
    "plan_sandbox",
    "release_kernel",
    "remove_cgroup_dirs",
    "sweep_stale_cgroups",
    "user_uid",
]
