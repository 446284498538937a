"""Which kernel a pool's worker gets, and the code that bootstraps the runtime in it.

A pool asks its :class:`KernelFactory` for one kernel per worker: on a gateway when the
environment names one (a stock kernel, which first receives the in-kernel package:
handles/gateway/bootstrap.py), else on this machine, launched (or forked from the kernel
template) with the node's interpreter, requirements and isolation (kernelexec.envs). The
launch spec is prepared once per pool and reused by every kernel and every restart.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config import EnvConfig
from ..worker import BOOTSTRAP_CODE
from .base import KernelHandle, LaunchSpec

__all__ = ["KernelFactory"]


class KernelFactory:
    """The kernels of one node: ``bootstrap_code`` is known from the start, ``make`` gives
    the kernel of worker ``index``. ``installing(detail)`` is told when requirements are
    being installed (the pool shows it as its state)."""

    def __init__(
        self,
        env: EnvConfig,
        *,
        node_id: str,
        workdir: str,
        installing: Callable[[str], None],
    ) -> None:
        self.env = env
        self.node_id = node_id
        self.workdir = workdir
        self.installing = installing
        self._launch: LaunchSpec | None = None
        self._bootstrap: str | None = None

    @property
    def bootstrap_code(self) -> str:
        """The code a new kernel executes to install the runtime (a gateway kernel's first
        receives the in-kernel package)."""
        if self._bootstrap is None:
            if self.env.gateway_url:
                from .gateway import runtime_bootstrap_code

                self._bootstrap = runtime_bootstrap_code()
            else:
                self._bootstrap = BOOTSTRAP_CODE
        return self._bootstrap

    async def make(self, index: int) -> KernelHandle:
        """A new kernel handle for worker ``index`` (not started yet)."""
        if self.env.gateway_url:
            from .gateway import make_gateway_kernel

            kernel: KernelHandle = make_gateway_kernel(self.env, node_id=self.node_id)
            return kernel
        from .local import LocalKernel

        if self._launch is None:
            self._launch = await self._launch_spec()
        return LocalKernel(self._launch, name=f"{self.node_id}#{index}")

    async def _launch_spec(self) -> LaunchSpec:
        env = self.env
        if env.python or env.requirements or env.is_isolated:
            from .. import envs

            if env.requirements:
                self.installing("")
            return await envs.prepare_launch(
                env, node_id=self.node_id, workdir=self.workdir, progress=self.installing
            )
        from .local import default_launch_spec

        return default_launch_spec(cwd=self.workdir)
