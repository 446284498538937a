"""A real Jupyter Kernel Gateway on 127.0.0.1, for tests and bench/gateway_latency.py.

``running_gateway(token)`` starts ``jupyter kernelgateway`` from this interpreter's
environment on a free port with the given auth token and kernel listing enabled, waits
until it answers, yields its base URL, and on exit stops it (SIGTERM, then SIGKILL of the
whole process group). A kernel process that outlives the gateway is killed and reported as
an error: nothing may be left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

__all__ = ["free_port", "gateway_kernel_ids", "running_gateway"]

_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get(url: str, token: str, timeout: float = 2.0) -> bytes:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body: bytes = response.read()
        return body


def gateway_kernel_ids(url: str, token: str) -> list[str]:
    """The ids of the kernels the gateway runs (GET /api/kernels)."""
    import json

    return [k["id"] for k in json.loads(_get(f"{url}/api/kernels", token))]


def _stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> list[str]:
    """Stop the gateway; returns the kernels that outlived it (killed now, but reported)."""
    import psutil

    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        children = []
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    # kernels are in the gateway's process group: kill stragglers of the group too
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    _gone, alive = psutil.wait_procs(children, timeout=5)
    survivors = []
    for child in alive:
        with contextlib.suppress(psutil.Error):
            if child.status() != psutil.STATUS_ZOMBIE:
                survivors.append(" ".join(child.cmdline()))
                child.kill()
    return survivors


def _kernelspec_dir(python: str | None) -> str:
    """A JUPYTER_PATH entry with a ``python3`` kernel spec running ``python`` (when given)
    and a ``never-ready`` spec whose process never becomes a kernel (start timeouts)."""
    import json

    root = tempfile.mkdtemp(prefix="kernelexec-kg-spec-")
    specs = {"never-ready": [sys.executable, "-c", "import time; time.sleep(300)"]}
    if python:
        specs["python3"] = [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    for name, argv in specs.items():
        spec = Path(root, "kernels", name)
        spec.mkdir(parents=True)
        spec.joinpath("kernel.json").write_text(
            json.dumps({"argv": argv, "display_name": name, "language": "python"})
        )
    return root


@contextlib.contextmanager
def running_gateway(
    token: str, *, extra_args: tuple[str, ...] = (), kernel_python: str | None = None,
    port: int | None = None,
) -> Iterator[str]:
    """``kernel_python``: run kernels with this interpreter (default: this environment's,
    or $KERNELEXEC_GATEWAY_KERNEL_PYTHON, e.g. one with ipykernel 6 like EG's images)."""
    kernel_python = kernel_python or os.environ.get("KERNELEXEC_GATEWAY_KERNEL_PYTHON")
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        str(_BIN / "jupyter"),
        "kernelgateway",
        "--KernelGatewayApp.ip=127.0.0.1",
        f"--KernelGatewayApp.port={port}",
        f"--KernelGatewayApp.auth_token={token}",
        "--KernelGatewayApp.default_kernel_name=python3",
        "--JupyterWebsocketPersonality.list_kernels=True",
        *extra_args,
    ]
    env = dict(os.environ)
    env["PATH"] = f"{_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["JUPYTER_PATH"] = str(_BIN.parent / "share" / "jupyter")
    spec_root = _kernelspec_dir(kernel_python)
    env["JUPYTER_PATH"] = spec_root + os.pathsep + env["JUPYTER_PATH"]
    env.pop("KG_AUTH_TOKEN", None)
    log = tempfile.NamedTemporaryFile(prefix="kernelexec-kg-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                text = Path(log.name).read_text(errors="replace")
                msg = f"kernel gateway exited with {proc.returncode}:\n{text[-3000:]}"
                raise RuntimeError(msg)
            try:
                _get(f"{url}/api", token, timeout=1.0)
                break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    msg = f"kernel gateway did not answer on {url} within 30 s"
                    raise RuntimeError(msg) from None
                time.sleep(0.1)
        yield url
    finally:
        survivors = _stop(proc)
        log.close()
        with contextlib.suppress(OSError):
            os.unlink(log.name)
        import shutil

        shutil.rmtree(spec_root, ignore_errors=True)
    if survivors:
        msg = f"kernels outlived the kernel gateway (killed now): {survivors}"
        raise RuntimeError(msg)
