"""The kernel side of kernelexec.handles.gateway: runs inside a stock remote kernel.

Never imported by the bridge: :func:`~.bootstrap.runtime_bootstrap_code` reads this file and
has the kernel execute it in a namespace of its own, then call :func:`bootstrap`. So it
imports only the standard library and IPython at module level, and kernelexec only once the
bundle is unpacked and on ``sys.path``.

:class:`KernelexecGateway` (the kernel's ``__kernelexec_gw__``) keeps staged buffers of
requests above the message cap (:mod:`.staging`) and turns blobs into buffers and back
(:mod:`.blob_transfer`), from IPython's pre_/post_execute hooks, and answers the
``kernelexec_request`` shell message (the fast path of local kernels, kernelexec/kernel/app.py)
once it is registered among the kernel's shell handlers.

This file must run on every kernel line people run (docs/scale-out.md): Python 3.9+,
ipykernel 6.29+ and 7.x, jupyter_client 6.1+ and 8.x. :func:`bootstrap` refuses older ones
with an error naming the kernel's versions; what a kernel lacks is done without.
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

Fix = Callable[[dict[str, Any], "str | None"], dict[str, Any]]

#: the shell message of one runtime op (kernelexec.kernel.app.REQUEST_TYPE) and its reply
REQUEST_TYPE = "kernelexec_request"
REPLY_TYPE = "kernelexec_reply"
#: comm of the runtime's events, and the runtime's name in the user namespace
#: (these four: spec.json "kernel", checked by tests/test_contract_homes.py)
EVENTS_COMM = "kernelexec-events"
RUNTIME_NAME = "__kernelexec__"
#: comm_id of the output blobs of one request (blob_transfer.BLOBS_COMM_ID)
BLOBS_COMM_ID = "kernelexec-gw-blobs"
#: what the execute_reply payload of the bootstrap says (source) to the handle
INFO_SOURCE = "kernelexec-gw"
#: the oldest kernel line kernelexec runs on (tested: docs/scale-out.md)
MINIMUM = {"Python": (3, 9), "ipykernel": (6, 29), "jupyter_client": (6, 1, 12)}


def _error_reply(name: str, value: str) -> dict[str, Any]:
    return {"status": "error", "ename": name, "evalue": value, "traceback": []}


def _shell() -> Any:
    return get_ipython()


class KernelexecGateway:
    """Staged buffers and blobs as buffers, around every execute of this kernel."""

    def __init__(self) -> None:
        self.staged: dict[str, dict[int, list[bytes]]] = {}
        self.inputs: list[str] = []
        self.shell: Any = None
        self.kernel: Any = None

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
            from kernelexec.kernel import blobs

            buffers = parent["buffers"]

            def to_file(entry: dict[str, Any], req_id: str | None) -> dict[str, Any]:
                new = blobs.write_blob(buffers[entry["gw"]], req_id)
                self.inputs.append(os.path.join(blobs.blob_dir(), new[blobs.NAME]))
                return new

            self._walk(content.get("kernelexec"), to_file)

    def after(self) -> None:
        # input blob files go; output blob files travel as buffers of one comm_msg
        self._ship(_shell().payload_manager.read_payload())

    def _drop_inputs(self) -> None:
        for path in self.inputs:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self.inputs = []

    def _ship(self, items: list[Any]) -> None:
        self._drop_inputs()
        buffers: list[bytes] = []
        for item in items:
            if isinstance(item, dict) and item.get("source") == "kernelexec":
                self._walk(item.get("data"), self._packer(buffers))
        if buffers:
            parent = self._parent()
            data = {"msg_id": parent["header"]["msg_id"], "count": len(buffers)}
            self._send(BLOBS_COMM_ID, data, parent, buffers)

    def install_requests(self, kernel: Any) -> bool:
        """Answer ``kernelexec_request`` in this stock kernel, as kernelexec's own kernels do."""
        handlers = getattr(kernel, "shell_handlers", None)
        if not isinstance(handlers, dict):
            return False
        handlers[REQUEST_TYPE] = self.request
        self.kernel = kernel
        return True

    def uninstall_requests(self) -> None:
        kernel, self.kernel = self.kernel, None
        handlers = getattr(kernel, "shell_handlers", None)
        if isinstance(handlers, dict) and handlers.get(REQUEST_TYPE) == self.request:
            del handlers[REQUEST_TYPE]

    def request(self, stream: Any, ident: Any, parent: Any) -> None:
        """The shell handler of ``kernelexec_request``: the runtime op of the request's
        content, its answer in the reply's payload (staged buffers and blobs as for an
        execute). A probe (``kernelexec_probe`` in the content) only says it is here."""
        content = parent.get("content") or {}
        if content.get("kernelexec_probe"):
            reply: dict[str, Any] = {"status": "ok", "kernelexec_probe": True}
        else:
            reply = self._answer()
        _shell().kernel.session.send(stream, REPLY_TYPE, reply, parent, ident=ident)

    def _answer(self) -> dict[str, Any]:
        try:
            self.before()
            runtime = _shell().user_ns.get(RUNTIME_NAME)
            if runtime is None:
                return _error_reply("RuntimeError", "the kernelexec runtime is not installed")
            payload = [{"source": "kernelexec", "data": runtime.respond()}]
            self._ship(payload)
            return {"status": "ok", "payload": payload}
        except KeyboardInterrupt:  # the worker's backstop interrupt
            return _error_reply("KeyboardInterrupt", "interrupted")
        except Exception as exc:
            return _error_reply(type(exc).__name__, str(exc))
        finally:
            self._drop_inputs()  # input blob files go, whatever happened

    def wrap(self, runtime: Any) -> None:
        # events with blob refs carry the blobs as their own buffers
        channel = runtime.channel
        original = channel.event

        def event(ev: Any) -> Any:
            buffers: list[bytes] = []
            self._walk(ev, self._packer(buffers))
            if not buffers:
                return original(ev)
            self._send(EVENTS_COMM, ev, channel.parent, buffers)
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
        from kernelexec.kernel import blobs

        def pack(entry: dict[str, Any], req_id: str | None) -> dict[str, Any]:
            if "gw" in entry:
                return entry
            data = blobs.read_blob(entry, req_id)
            blobs.remove_table([entry], req_id)
            buffers.append(data)
            return {"gw": len(buffers) - 1, blobs.SIZE: len(data)}

        return pack

    def _walk(self, value: Any, fix: Fix) -> None:
        """Each entry of the blob tables of an envelope, in place (kernelexec.kernel.blobs.holders:
        batch items, results, a send event; never inside a message)."""
        from kernelexec.kernel import blobs

        for holder, req_id in list(blobs.holders(value)):
            holder[blobs.TABLE] = [fix(entry, req_id) for entry in holder[blobs.TABLE]]


def bootstrap(bundle: str, digest: str) -> None:
    """Unpack the kernelexec bundle, tune the kernel, install the helper and the runtime;
    the execute_reply's payload tells the handle the kernel's versions and features."""
    versions = check_versions()
    files = json.loads(zlib.decompress(base64.b64decode(bundle)))
    root = _unpack(files, digest)
    for name in [m for m in sys.modules if m == "kernelexec" or m.startswith("kernelexec.")]:
        del sys.modules[name]
    sys.path.insert(0, root)
    ip = _shell()
    features: dict[str, Any] = {"wire_pack": _tune(ip)}
    previous = ip.user_ns.get("__kernelexec_gw__")
    if previous is not None and hasattr(previous, "unregister"):
        previous.unregister()
    if previous is not None and hasattr(previous, "uninstall_requests"):
        previous.uninstall_requests()
    helper = ip.user_ns["__kernelexec_gw__"] = KernelexecGateway()
    helper.register(ip)
    try:
        import kernelexec.kernel.runtime as runtime
    except ModuleNotFoundError as exc:
        if exc.name != "kernelexec.kernel.runtime":
            raise
    else:
        helper.wrap(runtime.install(ip))
        kernel = getattr(ip, "kernel", None)
        features["request"] = helper.install_requests(kernel) and REQUEST_TYPE
    info = {"versions": versions, "features": features}
    ip.payload_manager.write_payload({"source": INFO_SOURCE, "data": info})


def _version(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in text.split("."):
        digits = ""
        for char in piece:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        parts.append(int(digits))
        if digits != piece:
            break
    return tuple(parts)


def check_versions() -> dict[str, str]:
    """The kernel's Python, ipykernel and jupyter_client versions; RuntimeError naming them
    and what to upgrade when one is older than kernelexec supports (:data:`MINIMUM`)."""
    import ipykernel
    import jupyter_client

    versions = {
        "Python": ".".join(str(n) for n in sys.version_info[:3]),
        "ipykernel": str(getattr(ipykernel, "__version__", "0")),
        "jupyter_client": str(getattr(jupyter_client, "__version__", "0")),
    }
    old = [
        f"{name} {versions[name]} (needs >= {'.'.join(str(n) for n in least)})"
        for name, least in MINIMUM.items()
        if _version(versions[name]) < least
    ]
    if old:
        have = ", ".join(f"{name} {value}" for name, value in versions.items())
        msg = (
            f"this kernel is too old for kernelexec: {'; '.join(old)}. The kernel has {have}; "
            "upgrade these in the kernel's image or environment (docs/scale-out.md)"
        )
        raise RuntimeError(msg)
    return versions


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


def _tune(ip: Any) -> bool:
    """No post-execute sleep, no history; the output tuning local kernels get. Whether the
    kernel now packs messages as local kernels do (lone surrogates, NaN)."""
    kernel = getattr(ip, "kernel", None)
    if kernel is not None and hasattr(kernel, "_execute_sleep"):
        kernel._execute_sleep = 0.0
    packs = False
    try:  # as kernelexec.kernel does for local kernels, where ipykernel has what it needs
        from ipykernel.iostream import OutStream

        from kernelexec.kernel import app as tuning

        fields = ("_buffers", "_flush_pending", "_subprocess_flush_pending")
        if isinstance(sys.stdout, OutStream) and all(hasattr(sys.stdout, f) for f in fields):
            getattr(tuning, "_skip_empty_flushes", lambda: None)()
        if kernel is not None and _packs(getattr(tuning, "wire_pack", None)):
            kernel.session.pack = tuning.wire_pack
            packs = True
    except Exception:
        pass
    with contextlib.suppress(Exception):
        ip.history_manager.enabled = False
    return packs


def _packs(pack: Any) -> bool:
    """Whether ``pack`` packs what a kernel sends (dates in headers, NaN, a lone surrogate)
    with this kernel's jupyter_client: a packer that raises would lose every reply."""
    import datetime

    if not callable(pack):
        return False
    sample = {"date": datetime.datetime.now(), "n": float("nan"), "s": "a\ud800", "e": "é"}
    try:
        return bool(json.loads(pack(sample))["s"] == "a\ufffd")
    except Exception:
        return False
