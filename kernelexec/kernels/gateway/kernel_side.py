"""The kernel side of kernelexec.kernels.gateway: runs inside a stock remote kernel.

Never imported by the bridge: :func:`~.bootstrap.runtime_bootstrap_code` reads this file and
has the kernel execute it in a namespace of its own, then call :func:`bootstrap`. So it
imports only the standard library and IPython at module level, and kernelexec only once the
bundle is unpacked and on ``sys.path``.

:class:`KernelexecGateway` (the kernel's ``__kernelexec_gw__``) keeps staged buffers of
requests above the message cap (:mod:`.staging`) and turns blobs into buffers and back
(:mod:`.blob_transfer`), from IPython's pre_/post_execute hooks.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import os
import shutil
import sys
import tempfile
import zlib
from collections.abc import Callable
from typing import Any

from IPython import get_ipython

Fix = Callable[[dict[str, Any]], dict[str, Any]]


def _shell() -> Any:
    return get_ipython()


class KernelexecGateway:
    """Staged buffers and blobs as buffers, around every execute of this kernel."""

    def __init__(self) -> None:
        self.staged: dict[str, dict[int, list[bytes]]] = {}
        self.inputs: list[str] = []
        self.shell: Any = None

    def register(self, shell: Any) -> None:
        # before()/after() run around every execute (pre_/post_execute fire even when silent)
        self.shell = shell
        shell.events.register("pre_execute", self.before)
        shell.events.register("post_execute", self.after)

    def unregister(self) -> None:
        if self.shell is not None:
            self.shell.events.unregister("pre_execute", self.before)
            self.shell.events.unregister("post_execute", self.after)
            self.shell = None

    def _parent(self) -> Any:
        kernel = _shell().kernel
        try:
            return kernel.get_parent("shell")
        except TypeError:
            return kernel.get_parent()

    def stage(self) -> None:
        parent = self._parent()
        info = parent["content"]["kernelexec_stage"]
        parts = self.staged.setdefault(info["key"], {}).setdefault(info["index"], [])
        parts.extend(bytes(b) for b in parent["buffers"])

    def before(self) -> None:
        # staged chunks back into the buffers; buffer blobs into this machine's blob files
        parent = self._parent()
        content = parent["content"]
        info = content.pop("kernelexec_staged", None)
        if info is not None:
            parts = self.staged.pop(info["key"], {})
            joined = [b"".join(parts.get(i, ())) for i in range(info["count"])]
            parent["buffers"][:] = [memoryview(b) for b in joined]
        if content.pop("kernelexec_gw_blobs", False):
            from kernelexec import blobs

            buffers = parent["buffers"]

            def to_file(ref: dict[str, Any]) -> dict[str, Any]:
                new = blobs.write_blob(buffers[ref["gw"]], ref.get("req"))
                self.inputs.append(new["path"])
                return new

            self._walk(content.get("kernelexec"), to_file)

    def after(self) -> None:
        # input blob files go; output blob files travel as buffers of one comm_msg
        for path in self.inputs:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self.inputs = []
        buffers: list[bytes] = []
        for item in _shell().payload_manager.read_payload():
            if item.get("source") == "kernelexec":
                self._walk(item.get("data"), self._packer(buffers))
        if buffers:
            parent = self._parent()
            data = {"msg_id": parent["header"]["msg_id"], "count": len(buffers)}
            self._send("kernelexec-gw-blobs", data, parent, buffers)

    def wrap(self, runtime: Any) -> None:
        # events with blob refs carry the blobs as their own buffers
        channel = runtime.channel
        original = channel.event

        def event(ev: Any) -> Any:
            buffers: list[bytes] = []
            self._walk(ev, self._packer(buffers))
            if not buffers:
                return original(ev)
            self._send("kernelexec-events", ev, channel.parent, buffers)
            return None

        channel.event = event

    def _send(self, comm_id: str, data: Any, parent: Any, buffers: list[bytes]) -> None:
        kernel = _shell().kernel
        content = {"comm_id": comm_id, "data": data}
        kernel.session.send(
            kernel.iopub_socket,
            "comm_msg",
            content,
            parent=parent,
            ident=("comm-" + comm_id).encode(),
            buffers=buffers,
        )

    def _packer(self, buffers: list[bytes]) -> Fix:
        from kernelexec import blobs

        def pack(ref: dict[str, Any]) -> dict[str, Any]:
            path = ref.get("path")
            if not isinstance(path, str):
                return ref
            data = blobs.read_blob(ref)
            with contextlib.suppress(OSError):
                os.unlink(path)
            parsed = blobs.parse_name(os.path.basename(path))
            buffers.append(data)
            return {
                "$kx": "blob",
                "gw": len(buffers) - 1,
                "size": len(data),
                "req": parsed[1] if parsed else "_",
            }

        return pack

    def _walk(self, value: Any, fix: Fix) -> None:
        if isinstance(value, dict):
            if value.get("$kx") == "blob":
                new = fix(value)
                if new is not value:
                    value.clear()
                    value.update(new)
                return
            for item in value.values():
                self._walk(item, fix)
        elif isinstance(value, list):
            for item in value:
                self._walk(item, fix)


def bootstrap(bundle: str, digest: str) -> None:
    """Unpack the kernelexec bundle, tune the kernel, install the helper and the runtime."""
    files = json.loads(zlib.decompress(base64.b64decode(bundle)))
    root = _unpack(files, digest)
    for name in [m for m in sys.modules if m == "kernelexec" or m.startswith("kernelexec.")]:
        del sys.modules[name]
    sys.path.insert(0, root)
    ip = _shell()
    _tune(ip)
    previous = ip.user_ns.get("__kernelexec_gw__")
    if previous is not None and hasattr(previous, "unregister"):
        previous.unregister()
    helper = ip.user_ns["__kernelexec_gw__"] = KernelexecGateway()
    helper.register(ip)
    try:
        import kernelexec.runtime as runtime
    except ModuleNotFoundError as exc:
        if exc.name != "kernelexec.runtime":
            raise
        return
    helper.wrap(runtime.install(ip))


def _unpack(files: dict[str, str], digest: str) -> str:
    """Write the bundle's files into a private directory (gone when the kernel exits)."""
    tmp = tempfile.gettempdir()
    _sweep(tmp)
    root = tempfile.mkdtemp(prefix=f"kernelexec-gw-{os.getpid()}-{digest[:8]}-")
    atexit.register(shutil.rmtree, root, True)
    for rel, data in files.items():
        path = os.path.join(root, *rel.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(base64.b64decode(data))
    return root


def _sweep(tmp: str) -> None:
    """Remove directories left by kernels that died without atexit (os._exit, kill)."""
    for name in os.listdir(tmp):
        parts = name.split("-")
        if name.startswith("kernelexec-gw-") and len(parts) > 3 and parts[2].isdigit():
            path = os.path.join(tmp, name)
            try:
                if os.stat(path).st_uid == os.getuid():
                    os.kill(int(parts[2]), 0)
            except ProcessLookupError:
                shutil.rmtree(path, True)
            except OSError:
                pass


def _tune(ip: Any) -> None:
    """No post-execute sleep, no history; the output tuning local kernels get."""
    kernel = getattr(ip, "kernel", None)
    if kernel is not None and hasattr(kernel, "_execute_sleep"):
        kernel._execute_sleep = 0.0
    try:  # as kernelexec.kernel does for local kernels, where ipykernel has what it needs
        from ipykernel.iostream import OutStream

        from kernelexec import kernel as tuning

        fields = ("_buffers", "_flush_pending", "_subprocess_flush_pending")
        if isinstance(sys.stdout, OutStream) and all(hasattr(sys.stdout, f) for f in fields):
            getattr(tuning, "_skip_empty_flushes", lambda: None)()
        if kernel is not None and hasattr(tuning, "wire_pack"):
            kernel.session.pack = tuning.wire_pack  # lone surrogates, NaN: as local kernels
    except Exception:
        pass
    with contextlib.suppress(Exception):
        ip.history_manager.enabled = False
