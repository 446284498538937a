"""Real gateways on 127.0.0.1, for tests and bench/gateway_latency.py.

``running_gateway(token, flavour=...)`` starts a gateway of one :data:`FLAVOURS` entry on a
free port with the given auth token and kernel listing enabled, waits until it answers,
yields its base URL, and on exit stops it (SIGTERM, then SIGKILL of the whole process
group). A kernel process that outlives the gateway is killed and reported as an error:
nothing may be left behind.

The flavours are the supported matrix of docs/scale-out.md: Jupyter Kernel Gateway 3.0 (from
this interpreter's environment) with kernels of ipykernel 7 and of ipykernel 6.29, and
Enterprise Gateway 3.3.0 (which needs jupyter_server < 2 and jupyter_client < 7, so a
virtual environment of its own) with a kernel environment pinned as EG's images pin it
(ipykernel 6.29.5, jupyter_client 6.1.12). The environments other than this one are built
with uv on first use (:func:`ensure_env`, under a file lock: parallel test runs build once)
into the repository's ignored ``build/gateway/``; ``scripts/setup`` builds them ahead
(``python tests/gateway_fixtures.py``). ``KERNELEXEC_GATEWAY_MATRIX=kg3-ipykernel7,...``
restricts the matrix the tests run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_FLAVOUR",
    "FLAVOURS",
    "Flavour",
    "Gateways",
    "ensure_env",
    "free_port",
    "gateway_kernel_ids",
    "matrix",
    "running_gateway",
]

_BIN = Path(sys.executable).parent
BUILD = Path(__file__).resolve().parent.parent / "build" / "gateway"

#: Environments built with uv under BUILD (name: requirements). Resolution is held to what
#: was published by _EXCLUDE_NEWER, so a build made later installs the same versions.
ENVS: dict[str, tuple[str, ...]] = {
    # Enterprise Gateway 3.3.0: Python 3.10 or 3.11 (pyzmq < 25 has no wheels past 3.11)
    "eg-3.3": ("jupyter_enterprise_gateway==3.3.0", "jupyter_server<2", "jupyter_client<7"),
    # the kernel of EG's images: ipykernel 6.29.5 with jupyter_client 6.1.12
    "kernel-eg": ("ipykernel==6.29.5", "jupyter_client==6.1.12"),
    # an ipykernel 6 kernel with today's jupyter_client
    "kernel-ipykernel6": ("ipykernel==6.29.5", "jupyter_client>=8,<9"),
}
_EXCLUDE_NEWER = "2026-11-01T00:00:00Z"


@dataclass(frozen=True)
class Flavour:
    """One gateway of the matrix: which server, from which environment, with which kernel."""

    name: str
    server: str  # "kg" (jupyter kernelgateway) or "eg" (jupyter enterprisegateway)
    server_env: str | None = None  # an ENVS name; None: this interpreter's environment
    kernel_env: str | None = None  # an ENVS name; None: this interpreter's environment

    @property
    def kernel_env_vars(self) -> dict[str, str]:
        """KERNEL_* a GatewayKernel needs here (EG refuses to start kernels for root)."""
        return {"KERNEL_USERNAME": "kernelexec"} if self.server == "eg" else {}


FLAVOURS = {
    f.name: f
    for f in (
        Flavour("kg3-ipykernel7", "kg"),
        Flavour("kg3-ipykernel6", "kg", kernel_env="kernel-ipykernel6"),
        Flavour("eg3.3-jc6.1", "eg", server_env="eg-3.3", kernel_env="kernel-eg"),
    )
}
DEFAULT_FLAVOUR = "kg3-ipykernel7"


def matrix() -> list[str]:
    """The flavours the tests run ($KERNELEXEC_GATEWAY_MATRIX, comma-separated; all)."""
    chosen = os.environ.get("KERNELEXEC_GATEWAY_MATRIX", "").strip()
    names = [n.strip() for n in chosen.split(",") if n.strip()] if chosen else list(FLAVOURS)
    unknown = [n for n in names if n not in FLAVOURS]
    if unknown:
        msg = f"KERNELEXEC_GATEWAY_MATRIX names {unknown}; known: {sorted(FLAVOURS)}"
        raise ValueError(msg)
    return names


def _base_python() -> str:
    chosen = os.environ.get("KERNELEXEC_GATEWAY_MATRIX_PYTHON")
    return chosen or getattr(sys, "_base_executable", None) or sys.executable


def ensure_env(name: str) -> Path:
    """The bin directory of environment ``name`` of :data:`ENVS`, built with uv when it is
    missing or was built from other requirements (under a lock: one builder at a time)."""
    requirements = ENVS[name]
    root = BUILD / name
    python = _base_python()
    stamp = json.dumps({"requirements": requirements, "python": python,
                        "exclude_newer": _EXCLUDE_NEWER})
    marker = root / ".kernelexec-env"
    BUILD.mkdir(parents=True, exist_ok=True)
    with open(BUILD / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file() and marker.read_text() == stamp:
            return root / "bin"
        shutil.rmtree(root, ignore_errors=True)
        uv = [sys.executable, "-m", "uv"]
        steps = [
            [*uv, "venv", "-q", "-p", python, str(root)],
            [*uv, "pip", "install", "-q", "-p", str(root / "bin" / "python"),
             "--exclude-newer", _EXCLUDE_NEWER, *requirements],
        ]
        for argv in steps:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
            if done.returncode != 0:
                msg = (
                    f"building the gateway test environment {name} ({' '.join(requirements)}) "
                    f"with {python} failed:\n{done.stderr[-3000:]}"
                )
                raise RuntimeError(msg)
        marker.write_text(stamp)
    return root / "bin"


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


#: IPython startup file of the ``mute`` kernel spec: the kernel never answers kernelexec's
#: bootstrap (it sleeps in the bootstrap's pre_execute hook), but answers everything else.
_MUTE_STARTUP = """\
import time


def _kernelexec_test_mute():
    parent = get_ipython().kernel.get_parent("shell")
    if "_kernelexec_bootstrap" in str(parent.get("content", {}).get("code", "")):
        time.sleep(3600)


get_ipython().events.register("pre_execute", _kernelexec_test_mute)
"""


def _kernelspec_dir(python: str | None) -> str:
    """A JUPYTER_PATH entry with a ``python3`` kernel spec running ``python`` (when given),
    a ``never-ready`` spec whose process never becomes a kernel (start timeouts) and a
    ``mute`` spec whose kernel never answers the bootstrap (bootstrap timeouts)."""
    root = tempfile.mkdtemp(prefix="kernelexec-kg-spec-")
    kernel = [python or "python", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    startup = Path(root, "ipython", "profile_default", "startup")
    startup.mkdir(parents=True)
    startup.joinpath("00-mute.py").write_text(_MUTE_STARTUP)
    specs: dict[str, dict[str, object]] = {
        "never-ready": {"argv": [sys.executable, "-c", "import time; time.sleep(300)"]},
        "mute": {"argv": kernel, "env": {"IPYTHONDIR": str(Path(root, "ipython"))}},
    }
    if python:
        specs["python3"] = {"argv": kernel}
    for name, fields in specs.items():
        spec = Path(root, "kernels", name)
        spec.mkdir(parents=True)
        body = {**fields, "display_name": name, "language": "python"}
        spec.joinpath("kernel.json").write_text(json.dumps(body))
    return root


def _server_argv(flavour: Flavour, bin_dir: Path, port: int, token: str) -> list[str]:
    if flavour.server == "eg":
        return [
            str(bin_dir / "jupyter"),
            "enterprisegateway",
            "--EnterpriseGatewayApp.ip=127.0.0.1",
            f"--EnterpriseGatewayApp.port={port}",
            f"--EnterpriseGatewayApp.auth_token={token}",
            "--EnterpriseGatewayApp.default_kernel_name=python3",
            "--EnterpriseGatewayApp.list_kernels=True",
        ]
    return [
        str(bin_dir / "jupyter"),
        "kernelgateway",
        "--KernelGatewayApp.ip=127.0.0.1",
        f"--KernelGatewayApp.port={port}",
        f"--KernelGatewayApp.auth_token={token}",
        "--KernelGatewayApp.default_kernel_name=python3",
        "--JupyterWebsocketPersonality.list_kernels=True",
    ]


@contextlib.contextmanager
def running_gateway(
    token: str, *, extra_args: tuple[str, ...] = (), kernel_python: str | None = None,
    port: int | None = None, flavour: str = DEFAULT_FLAVOUR,
) -> Iterator[str]:
    """``flavour``: a :data:`FLAVOURS` name (its environments are built on first use).
    ``kernel_python``: run kernels with this interpreter instead (default: the flavour's,
    or $KERNELEXEC_GATEWAY_KERNEL_PYTHON, or this environment's)."""
    spec = FLAVOURS[flavour]
    bin_dir = ensure_env(spec.server_env) if spec.server_env else _BIN
    if kernel_python is None and spec.kernel_env:
        kernel_python = str(ensure_env(spec.kernel_env) / "python")
    kernel_python = kernel_python or os.environ.get("KERNELEXEC_GATEWAY_KERNEL_PYTHON")
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [*_server_argv(spec, bin_dir, port, token), *extra_args]
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
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
                msg = f"{flavour} gateway exited with {proc.returncode}:\n{text[-3000:]}"
                raise RuntimeError(msg)
            try:
                _get(f"{url}/api", token, timeout=1.0)
                break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    msg = f"{flavour} gateway did not answer on {url} within 30 s"
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


class Gateways:
    """Gateways of several flavours for one test module, each started on first use."""

    def __init__(self, token: str) -> None:
        self.token = token
        self._stack = contextlib.ExitStack()
        self._urls: dict[str, str] = {}

    def url(self, flavour: str = DEFAULT_FLAVOUR) -> str:
        if flavour not in self._urls:
            self._urls[flavour] = self._stack.enter_context(
                running_gateway(self.token, flavour=flavour)
            )
        return self._urls[flavour]

    def close(self) -> None:
        self._stack.close()


if __name__ == "__main__":  # scripts/setup: build the matrix's environments ahead
    for env_name in ENVS:
        print(f"gateway test environment {env_name}: {ensure_env(env_name).parent}")
