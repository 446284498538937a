""":class:`GatewayKernel`: a :class:`~kernelexec.handles.base.KernelHandle` on a gateway.

Lifecycle over the REST API (:mod:`.rest`), messages over the kernel WebSocket
(:mod:`.channels`). Every await is bounded: while an execute waits, the kernel's existence is
polled. Failures become :class:`~kernelexec.errors.GatewayError` (start, connect, token) or
:class:`~kernelexec.errors.KernelDiedError` (the kernel died, was culled, or the connection
is gone for good).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable
from dataclasses import replace
from typing import Any, TypeVar

from ...config import EnvConfig
from ...errors import GatewayError, KernelDiedError
from ...protocol import EVENTS_COMM, KERNEL_REQUEST_TYPE, KernelOp
from ..base import KernelHandle, execute_content
from .blob_transfer import BLOBS_COMM_ID, blobs_to_buffers, buffers_to_blobs, has_gw_refs
from .bootstrap import BOOTSTRAP_INFO, is_bootstrap
from .channels import KernelChannels
from .rest import GatewayNotFoundError, RestClient
from .settings import GatewaySettings, check_kernel_variable, kernel_env
from .staging import needs_staging, stage
from .wire import Message

__all__ = ["EVENTS_COMM_ID", "GatewayKernel", "make_gateway_kernel"]

log = logging.getLogger(__package__)

#: comm_msg carrying a runtime event whose blobs travel as its buffers
EVENTS_COMM_ID = EVENTS_COMM
#: the shell message of one runtime op (spec.json "kernel")
REQUEST_TYPE = KERNEL_REQUEST_TYPE
_T = TypeVar("_T")
#: The ops whose requests may name blob files (their tables travel as buffers, blob_transfer)
_CARRY_BLOBS = frozenset(
    {KernelOp.RUN, KernelOp.SETUP, KernelOp.STOP, KernelOp.INIT, KernelOp.CODE}
)


def make_gateway_kernel(env: EnvConfig, *, node_id: str) -> GatewayKernel:
    """The kernel factory the pool uses when ``env.gateway_url`` is set."""
    if not env.gateway_url:
        msg = "make_gateway_kernel needs env.gateway_url"
        raise GatewayError(msg)
    settings = GatewaySettings.from_url(env.gateway_url, env.gateway_token)
    variables = kernel_env(env, node_id)
    # Enterprise Gateway waits this long for a kernel to launch (its default is 30 s)
    variables.setdefault("KERNEL_LAUNCH_TIMEOUT", f"{int(settings.start_timeout)}")
    settings = replace(settings, kernel_env={**variables, **settings.kernel_env})
    for name, value in settings.kernel_env.items():
        check_kernel_variable(name, value)
    return GatewayKernel(settings, node_id=node_id)


class GatewayKernel(KernelHandle):
    """One kernel on a Jupyter Kernel/Enterprise Gateway. Driven by exactly one worker."""

    def __init__(self, settings: GatewaySettings, *, node_id: str = "") -> None:
        self.settings = settings
        self.node_id = node_id
        self.kernel_id: str | None = None
        self._rest = RestClient(settings)
        self._channels = KernelChannels(
            settings,
            self._rest.headers,
            on_iopub=self._on_iopub,
            on_input_request=self._answer_stdin,
            on_lost=self._mark_dead,
        )
        self._alive = False
        self._stage_seq = 0
        self._auto_restarted = False
        self._spec_checked = False
        #: output blobs of a reply (buffers of a kernelexec-gw-blobs comm_msg), by msg_id
        self._blob_parcels: dict[str, asyncio.Future[list[bytes]]] = {}
        #: whether requests go as ``kernelexec_request`` (after a bootstrap and a probe)
        self._speaks_requests = False
        #: what the last bootstrap said: {"versions": {...}, "features": {...}}
        self.bootstrap_info: dict[str, Any] = {}

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self.kernel_id is not None:
            await self.restart()
            return
        self._channels.closing = False
        self._speaks_requests = False
        body: dict[str, Any] = {"name": self.settings.kernel_name}
        if self.settings.kernel_env:
            for name, value in self.settings.kernel_env.items():
                check_kernel_variable(name, value)
            body["env"] = dict(self.settings.kernel_env)
        started = time.monotonic()
        await self._check_kernel_name()
        try:
            model = await self._rest.call(
                "POST",
                "/api/kernels",
                body,
                timeout=self.settings.start_timeout,
                retries=self.settings.retries,
                creates=True,
            )
        except GatewayNotFoundError as exc:
            msg = (
                f"gateway {self.settings.url} has no kernel API or no kernel spec "
                f"{self.settings.kernel_name!r} ({exc}); check gateway_url and kernel_name"
            )
            raise GatewayError(msg) from None
        self.kernel_id = str(model["id"])
        log.info(
            "gateway kernel %s started for node %s in %.2f s",
            self.kernel_id,
            self.node_id,
            time.monotonic() - started,
        )
        try:
            await self._open(self.settings.start_timeout)
        except BaseException:
            await self._delete_quietly()
            raise

    async def _check_kernel_name(self) -> None:
        """Fail clearly (and at once) when the gateway has no such kernel spec."""
        if self._spec_checked:
            return
        try:
            specs = await self._rest.call("GET", "/api/kernelspecs")
        except GatewayNotFoundError:
            return
        names = sorted((specs or {}).get("kernelspecs") or {})
        if names and self.settings.kernel_name not in names:
            msg = (
                f"gateway {self.settings.url} has no kernel spec "
                f"{self.settings.kernel_name!r}; it has {names} (set kernel_name in gateway_url)"
            )
            raise GatewayError(msg)
        self._spec_checked = True

    async def restart(self) -> None:
        self._alive = False  # until the restarted kernel answers
        self._speaks_requests = False  # until the bootstrap installs the handler again
        self._channels.fail_pending("the kernel was restarted")
        await self._channels.close()
        if self.kernel_id is None:
            await self.start()
            return
        if self._auto_restarted and await self._came_back():
            return
        try:
            await self._rest.call(
                "POST",
                f"/api/kernels/{self.kernel_id}/restart",
                timeout=self.settings.start_timeout,
                retries=2,
            )
        except (GatewayNotFoundError, GatewayError) as exc:
            # culled, lost by a restarted gateway, or a restart that failed: a new kernel
            log.warning(
                "gateway kernel %s could not be restarted (%s); starting a new one",
                self.kernel_id,
                exc,
            )
            await self._delete_quietly(retries=1)
            await self.start()
            return
        await self._open(self.settings.start_timeout)

    async def _came_back(self) -> bool:
        """The gateway restarts a dead kernel itself: whether the fresh process answers."""
        self._auto_restarted = False
        try:
            await self._open(self.settings.start_timeout)
            return True
        except (GatewayError, KernelDiedError) as exc:
            log.info("gateway kernel %s did not come back by itself: %s", self.kernel_id, exc)
            await self._channels.close()
            return False

    async def interrupt(self) -> None:
        if self.kernel_id is None:
            return
        try:
            await self._rest.call("POST", f"/api/kernels/{self.kernel_id}/interrupt")
        except GatewayNotFoundError:
            self._mark_dead("the gateway no longer knows the kernel")

    async def shutdown(self, *, now: bool = False) -> None:
        self._channels.closing = True
        self._channels.fail_pending("the kernel was shut down")
        await self._channels.close()
        self._channels.cancel_tasks()
        await self._delete_quietly(retries=1 if now else None)
        self._rest.close()  # a later start() makes a new HTTP client

    async def _delete_quietly(self, retries: int | None = None) -> None:
        kernel_id, self.kernel_id = self.kernel_id, None
        self._alive = False
        if kernel_id is None:
            return
        try:
            await self._rest.call("DELETE", f"/api/kernels/{kernel_id}", retries=retries)
        except GatewayNotFoundError:
            pass
        except GatewayError as exc:
            log.warning("gateway kernel %s may be left running: %s", kernel_id, exc)

    def is_alive(self) -> bool:
        return self._alive

    async def _open(self, timeout: float) -> None:
        """Connect the WebSocket and wait until the kernel answers a kernel_info_request."""
        await self._channels.open(self.kernel_id, timeout)
        self._alive = True

    def _mark_dead(self, reason: str) -> None:
        if self._channels.closing:
            return
        log.warning("gateway kernel %s: %s", self.kernel_id, reason)
        self._alive = False
        self._channels.death = reason
        self._channels.fail_pending(reason)

    # -- what the kernel says --------------------------------------------------------

    def _on_iopub(self, msg: Message) -> None:
        kind, content = msg.msg_type, msg.content
        if kind == "comm_msg" and content.get("comm_id") == BLOBS_COMM_ID:
            self._take_parcel(str((content.get("data") or {}).get("msg_id")), msg.buffers)
        elif kind == "comm_msg" and content.get("comm_id") == EVENTS_COMM_ID:
            self._on_event(content.get("data") or {}, [bytes(b) for b in msg.buffers])
        elif kind == "stream":
            if self.on_stream is not None:
                self.on_stream(str(content.get("name", "stdout")), str(content.get("text", "")))
        elif (
            kind == "status"
            and content.get("execution_state") in ("dead", "restarting")
            and not msg.parent_id  # the gateway's own notice, not the kernel's
        ):
            self._auto_restarted = content["execution_state"] == "restarting"
            self._mark_dead(f"the kernel died (gateway status {content['execution_state']!r})")

    def _take_parcel(self, msg_id: str, buffers: list[bytes]) -> None:
        """The output blobs of an execute_request still in flight; a parcel for any other
        msg_id (late, or made up by the kernel's code) is dropped, not kept forever."""
        parcel = self._blob_parcels.get(msg_id)
        if parcel is None and self._channels.awaits_reply(msg_id):  # before execute() looked
            parcel = self._blob_parcels[msg_id] = asyncio.get_running_loop().create_future()
        if parcel is None:
            log.warning("gateway kernel %s: dropped output blobs for unknown request %.40r",
                        self.kernel_id, msg_id)  # fmt: skip
            return
        if not parcel.done():
            parcel.set_result(buffers)

    def _on_event(self, event: Any, buffers: list[bytes]) -> None:
        if buffers and has_gw_refs(event):
            buffers_to_blobs(event, buffers)
            buffers = []
        if self.on_event is not None:
            try:
                self.on_event(event, buffers)
            except Exception:
                log.exception("gateway kernel %s: on_event failed", self.kernel_id)

    async def _answer_stdin(self, msg: Message) -> None:
        prompt = str(msg.content.get("prompt", ""))
        try:
            if self.on_stdin is None:
                problem = "no context handler: this kernel cannot ask for input"
                raise RuntimeError(problem)
            value = await asyncio.wait_for(self.on_stdin(prompt), self.settings.stdin_timeout)
        except Exception as exc:
            if isinstance(exc, asyncio.TimeoutError):
                exc = TimeoutError(f"no answer within {self.settings.stdin_timeout:g} s")
            value = json.dumps({"value": None, "error": f"{type(exc).__name__}: {exc}"})
        with contextlib.suppress(KernelDiedError):
            await self._channels.send("stdin", "input_reply", {"value": value}, parent=msg.header)

    # -- execute ---------------------------------------------------------------------

    async def execute(
        self, code: str, extra: dict[str, Any], buffers: list[bytes] | None = None
    ) -> dict[str, Any]:
        if is_bootstrap(code):
            return await self._bootstrap(code)
        content = execute_content(code, kernelexec=extra)
        return await self._call("execute_request", content, extra, buffers)

    async def request(self, op: dict[str, Any]) -> dict[str, Any]:
        """A ``kernelexec_request`` when the bootstrap installed its handler in the kernel
        and the gateway forwards it (see :meth:`_probe`); else the execute path."""
        if not self._speaks_requests:
            return await super().request(op)
        return await self._call(REQUEST_TYPE, {"kernelexec": op}, op, None)

    async def _call(
        self,
        msg_type: str,
        content: dict[str, Any],
        extra: dict[str, Any],
        buffers: list[bytes] | None,
    ) -> dict[str, Any]:
        """One shell request with ``extra`` as its ``content["kernelexec"]`` (blobs as
        buffers, staged above the message cap); the reply's content, output blobs local."""
        channels = self._channels
        await channels.wait_reconnected()
        if not self._alive or channels.ws is None:
            raise KernelDiedError(
                channels.death or f"gateway kernel {self.kernel_id} is not running"
            )
        buffers = list(buffers or [])
        if extra.get("op") in _CARRY_BLOBS:  # see blob_transfer
            content["kernelexec"], blobs_sent = blobs_to_buffers(extra, buffers)
            if blobs_sent:
                content["kernelexec_gw_blobs"] = True
        if needs_staging(content, buffers, self.settings.max_message):
            self._stage_seq += 1
            content["kernelexec_staged"] = await stage(
                channels,
                buffers,
                key=f"{channels.session}-{self._stage_seq}",
                max_message=self.settings.max_message,
                watch=self._watch,
            )
            buffers = []
        msg_id = await channels.send("shell", msg_type, content, buffers)
        self._blob_parcels.setdefault(msg_id, asyncio.get_running_loop().create_future())
        try:
            waiting = self._watch(channels.wait_reply(msg_id))
            limit = self._limit(extra.get("op"))
            reply = await (waiting if limit is None else self._bounded(waiting, limit, extra))
            return await self._blobs_from_kernel(msg_id, reply.content)
        finally:
            self._blob_parcels.pop(msg_id, None)

    def _limit(self, op: Any) -> float | None:
        """How long an op may take (None: the worker's own bound, from message timeouts)."""
        if op == KernelOp.RUN:
            return None
        if op == KernelOp.SETUP:
            return self.settings.setup_timeout or None
        if op in (KernelOp.INIT, KernelOp.CODE, KernelOp.PREFORK, KernelOp.STOP):
            return self.settings.bootstrap_timeout
        return None

    async def _bounded(self, waiting: Awaitable[_T], limit: float, extra: dict[str, Any]) -> _T:
        try:
            return await asyncio.wait_for(waiting, limit)
        except asyncio.TimeoutError:
            op = extra.get("op")
            option = "setup_timeout" if op == KernelOp.SETUP else "bootstrap_timeout"
            text = await self._unanswered(f"the {str(op)!r} request", limit, option)
            self._mark_dead(text)
            raise GatewayError(text) from None

    async def _bootstrap(self, code: str) -> dict[str, Any]:
        """Execute the runtime bootstrap, bounded by bootstrap_timeout; learn the kernel's
        versions and whether it answers ``kernelexec_request`` (then probe the gateway)."""
        self._speaks_requests = False
        content = execute_content(code, kernelexec={})
        limit = self.settings.bootstrap_timeout
        try:
            reply = await asyncio.wait_for(self._call("execute_request", content, {}, None), limit)
        except asyncio.TimeoutError:
            text = await self._unanswered("the kernelexec bootstrap", limit, "bootstrap_timeout")
            self._mark_dead(text)
            raise GatewayError(text) from None
        info = next(
            (
                p.get("data")
                for p in reply.get("payload") or []
                if isinstance(p, dict) and p.get("source") == BOOTSTRAP_INFO
            ),
            None,
        )
        self.bootstrap_info = info if isinstance(info, dict) else {}
        features = self.bootstrap_info.get("features") or {}
        if features.get("request") == REQUEST_TYPE and self.settings.fast_requests:
            self._speaks_requests = await self._probe()
        return reply

    async def _probe(self) -> bool:
        """Whether a ``kernelexec_request`` reaches the kernel and its reply comes back: a
        gateway may drop message types it does not know (``allowed_message_types``)."""
        channels = self._channels
        limit = min(self.settings.probe_timeout, self.settings.bootstrap_timeout)
        msg_id = await channels.send("shell", REQUEST_TYPE, {"kernelexec_probe": True})
        try:
            reply = await asyncio.wait_for(self._watch(channels.wait_reply(msg_id)), limit)
        except asyncio.TimeoutError:
            log.warning(
                "gateway %s did not pass a %s to kernel %s within %g s (its "
                "allowed_message_types?): using execute_request, which is slower",
                self.settings.url,
                REQUEST_TYPE,
                self.kernel_id,
                limit,
            )
            return False
        return bool(reply.content.get("kernelexec_probe"))

    async def _unanswered(self, what: str, limit: float, option: str) -> str:
        """Why a kernel did not answer, as far as the gateway and the kernel said."""
        try:
            model = await self._rest.call("GET", f"/api/kernels/{self.kernel_id}", retries=1)
            state = model.get("execution_state") if isinstance(model, dict) else None
            gateway = f"the gateway reports the kernel {state!r}" if state else ""
        except GatewayNotFoundError as exc:
            gateway = f"the gateway no longer knows the kernel ({exc})"
        except GatewayError as exc:
            gateway = f"the gateway did not say why ({exc})"
        info = self._channels.kernel_info
        language = info.get("language_info") or {}
        kernel = (
            f"the kernel reported {info.get('implementation', '?')} "
            f"{info.get('implementation_version', '?')}, messaging protocol "
            f"{info.get('protocol_version', '?')}, Python {language.get('version', '?')}"
        )
        return (
            f"gateway kernel {self.kernel_id} did not answer {what} within {limit:g} s "
            f"({'; '.join(p for p in (gateway, kernel) if p)}). The gateway's log has the "
            f"kernel's own errors; kernelexec needs ipykernel >= 6.29 and jupyter_client >= "
            f"6.1.12 in the kernel (docs/scale-out.md); raise {option} (gateway_url "
            f"?{option}=, KERNELEXEC_GATEWAY_{option.upper()}) if the kernel is only slow"
        )

    async def _blobs_from_kernel(self, msg_id: str, content: dict[str, Any]) -> dict[str, Any]:
        """Output blobs came as buffers of a comm_msg: write them to local blob files."""
        if not has_gw_refs(content.get("payload")):
            return content
        parcel = self._blob_parcels.setdefault(msg_id, asyncio.get_running_loop().create_future())
        try:
            buffers = await asyncio.wait_for(parcel, self.settings.request_timeout)
        except asyncio.TimeoutError:
            msg = f"gateway kernel {self.kernel_id}: the output blobs of a reply never came"
            raise GatewayError(msg) from None
        buffers_to_blobs(content.get("payload"), buffers)
        return content

    async def _watch(self, waiting: Awaitable[_T]) -> _T:
        """Await ``waiting`` while checking every liveness_interval that the kernel exists."""
        task = asyncio.ensure_future(waiting)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.settings.liveness_interval)
                if done:
                    return task.result()
                await self._check_exists()
        finally:
            task.cancel()

    async def _check_exists(self) -> None:
        try:
            model = await self._rest.call("GET", f"/api/kernels/{self.kernel_id}", retries=1)
        except GatewayNotFoundError:
            self._mark_dead("the gateway no longer knows the kernel (culled or deleted)")
            return
        except GatewayError:
            return  # transient; the WebSocket's pings decide about the connection
        if isinstance(model, dict) and model.get("execution_state") == "dead":
            self._mark_dead("the gateway reports the kernel dead")

    @property
    def description(self) -> str:
        return f"{self.settings.url} kernel {self.kernel_id}"
