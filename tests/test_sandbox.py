"""Isolation on real kernels: memory and CPU limits, no network, another user, clean-up.

Kernels are started from :func:`kernelexec.envs.prepare_launch`'s LaunchSpec by the worker's
own LocalKernel (jupyter_client underneath). Needs root, cgroups (v1 or v2) with the memory
and cpu controllers, and network namespaces: skipped where the host has none of them.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import pytest_asyncio

from kernelexec import envs, sandbox
from kernelexec.config import EnvConfig
from kernelexec.errors import ConfigError, EnvironmentBuildError, KernelDiedError
from kernelexec.handles.base import LaunchSpec
from kernelexec.handles.local import LocalKernel

ROOT = os.geteuid() == 0
HAS_CGROUPS = bool(sandbox.find_controller("memory") and sandbox.find_controller("cpu"))
needs_root = pytest.mark.skipif(not ROOT, reason="needs root (cgroups, namespaces, setuid)")
needs_cgroups = pytest.mark.skipif(not (ROOT and HAS_CGROUPS), reason="needs writable cgroups")


def without_cgroups(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a host where the bridge may not create cgroups."""
    monkeypatch.setattr(
        "kernelexec.sandbox.plan.make_cgroup_dirs", lambda *a, **k: ([], "test: no cgroups")
    )


def cgroup_leftovers() -> list[str]:
    """kernelexec cgroup directories of this process's pools."""
    found = []
    for controller in ("memory", "cpu"):
        located = sandbox.find_controller(controller)
        if located:
            for parent in (located[1] / "kernelexec", located[1].parent / "kernelexec"):
                found += [str(p) for p in parent.glob(f"*-{os.getpid()}-*")]
    return found


def runtime_leftovers() -> list[str]:
    return [str(p) for p in Path(tempfile.gettempdir()).glob(f"kernelexec-run-{os.getpid()}-*")]


@pytest.fixture(autouse=True)
def _no_leftovers() -> Iterator[None]:
    yield
    assert not cgroup_leftovers(), "cgroups left behind"
    assert not runtime_leftovers(), "runtime directories left behind"


@pytest.fixture
def workdir() -> Iterator[str]:
    """A node directory any user can reach (pytest's own temp root is private to root)."""
    path = tempfile.mkdtemp(prefix="kx-test-work-")
    os.chmod(path, 0o755)
    yield os.path.join(path, "node")
    shutil.rmtree(path, ignore_errors=True)


BASE_PYTHON = "/usr/bin/python3.11" if os.path.exists("/usr/bin/python3.11") else sys.executable


@pytest.fixture(scope="module")
def fenced(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """What a fenced env needs on a root bridge: env.user (a root kernel cannot be fenced in,
    so prepare_launch refuses one) and an interpreter that user can read (a managed
    environment in a directory open to it; the bridge's own may live under /root)."""
    if not ROOT:
        yield {}
        return
    user = request.getfixturevalue("test_user")
    env_dir = tempfile.mkdtemp(prefix="kx-test-sbx-envs-")
    os.chmod(env_dir, 0o755)
    old = os.environ.get(envs.ENV_DIR_VAR)
    os.environ[envs.ENV_DIR_VAR] = env_dir
    try:
        asyncio.run(envs.ensure_env(BASE_PYTHON, ["six"], lambda _text: None))
        yield {"user": user, "python": BASE_PYTHON, "requirements": ["six"]}
    except EnvironmentBuildError as exc:
        pytest.skip(f"cannot build a managed environment here: {exc}")
    finally:
        if old is None:
            os.environ.pop(envs.ENV_DIR_VAR, None)
        else:
            os.environ[envs.ENV_DIR_VAR] = old
        shutil.rmtree(env_dir, ignore_errors=True)


async def prepare(env: dict[str, Any], workdir: str, node_id: str = "sbx") -> LaunchSpec:
    lines: list[str] = []
    return await envs.prepare_launch(
        EnvConfig.from_dict(env), node_id=node_id, workdir=workdir, progress=lines.append
    )


class Kernel:
    """A LocalKernel plus stdout capture, for raw execute_requests (no kernelexec runtime)."""

    def __init__(self, spec: LaunchSpec) -> None:
        self.spec = spec
        self.handle = LocalKernel(spec, name="sandbox-test")
        self.out: list[str] = []
        self.handle.on_stream = lambda name, text: (
            self.out.append(text) if name == "stdout" else None
        )

    async def run(self, code: str) -> tuple[dict[str, Any], str]:
        self.out.clear()
        code += "\nimport sys; sys.stdout.flush(); sys.stderr.flush()"
        reply = await self.handle.execute(code, {})
        deadline = time.monotonic() + 30  # IOPub is not ordered with the shell reply
        while not self.out and reply["status"] == "ok" and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return reply, "".join(self.out)

    async def value(self, expression: str) -> str:
        reply, out = await self.run(f"print({expression})")
        assert reply["status"] == "ok", reply
        return out.strip()


@pytest_asyncio.fixture
async def kernel_factory() -> AsyncIterator[Any]:
    started: list[Kernel] = []

    async def start(spec: LaunchSpec) -> Kernel:
        kernel = Kernel(spec)
        started.append(kernel)
        await kernel.handle.start()
        return kernel

    yield start
    for kernel in started:
        pid = kernel.handle.pid
        await kernel.handle.shutdown(now=True)
        assert pid is None or not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


# --------------------------------------------------------------------------- units


def test_parse_memory_units() -> None:
    assert sandbox.parse_memory("512M") == 512 * 1024**2
    assert sandbox.parse_memory("1G") == 1024**3
    assert sandbox.parse_memory("1.5g") == int(1.5 * 1024**3)
    assert sandbox.parse_memory("256MiB") == 256 * 1024**2
    assert sandbox.parse_memory(4096) == 4096
    for bad in ("lots", "-1G", "0", "12X"):
        with pytest.raises(ValueError, match="512M"):
            sandbox.parse_memory(bad)


async def test_bad_memory_value_is_a_config_error(workdir: str) -> None:
    with pytest.raises(ConfigError, match=r"memory_limit.*'1 gigabyte'"):
        await prepare({"memory_limit": "1 gigabyte"}, workdir)


async def test_no_isolation_means_no_wrapper(workdir: str) -> None:
    spec = await prepare({}, workdir)
    assert sandbox.WRAPPER_MODULE not in spec.argv
    assert spec.cwd == workdir and os.path.isdir(workdir)


# --------------------------------------------------------------------------- memory


@needs_cgroups
async def test_memory_limit_kills_the_kernel_and_says_why(
    workdir: str, kernel_factory: Any, fenced: dict[str, Any]
) -> None:
    spec = await prepare({**fenced, "memory_limit": "200M"}, workdir)
    assert spec.cleanup is not None and "memory 200M" in spec.description
    kernel = await kernel_factory(spec)
    pid = kernel.handle.pid
    limit_dirs = [cg.kernel_dir(pid) for cg in sandbox.kernel_cgroups(spec.argv)]
    assert limit_dirs and all(d.is_dir() for d in limit_dirs)
    assert await kernel.value("len(bytearray(50 * 2**20))") == str(50 * 2**20)
    with pytest.raises(KernelDiedError) as died:
        await kernel.run("block = bytearray(400 * 2**20)")
    # LocalKernel asks envs.explain_death (which also releases the cgroup) and says why.
    assert "memory limit" in died.value.message and "200M" in died.value.message
    assert not any(d.exists() for d in limit_dirs), "the dead kernel's cgroup is released"
    assert envs.explain_death(spec, pid) is None, "asked once, then forgotten"
    await kernel.handle.restart()
    assert await kernel.value("'alive'") == "alive"
    assert kernel.handle.pid != pid


@needs_cgroups
async def test_ordinary_death_is_not_blamed_on_memory(
    workdir: str, kernel_factory: Any, fenced: dict[str, Any]
) -> None:
    spec = await prepare({**fenced, "memory_limit": "300M"}, workdir)
    kernel = await kernel_factory(spec)
    pid = kernel.handle.pid
    with pytest.raises(KernelDiedError) as died:
        await kernel.run("import os; os._exit(3)")
    assert "memory" not in died.value.message
    assert envs.explain_death(spec, pid) is None


@needs_root
async def test_memory_limit_without_cgroups_falls_back_to_rlimit_as(
    workdir: str, kernel_factory: Any, monkeypatch: pytest.MonkeyPatch, fenced: dict[str, Any]
) -> None:
    without_cgroups(monkeypatch)
    spec = await prepare({**fenced, "memory_limit": "1500M"}, workdir)
    assert "--rlimit-as" in spec.argv and "RLIMIT_AS" in spec.description
    kernel = await kernel_factory(spec)
    reply, _ = await kernel.run("block = bytearray(2 * 2**30)")
    assert reply["status"] == "error" and reply["ename"] == "MemoryError"
    assert await kernel.value("'still here'") == "still here"


async def test_small_memory_limit_without_cgroups_is_refused(
    workdir: str, monkeypatch: pytest.MonkeyPatch, fenced: dict[str, Any]
) -> None:
    without_cgroups(monkeypatch)
    with pytest.raises(EnvironmentBuildError, match=r"memory_limit=300M.*RLIMIT_AS.*1G"):
        await prepare({**fenced, "memory_limit": "300M"}, workdir)


@needs_cgroups
async def test_memory_limit_too_small_to_start_fails_at_deploy(
    workdir: str, fenced: dict[str, Any]
) -> None:
    with pytest.raises(EnvironmentBuildError, match=r"memory limit.*8M"):
        await prepare({**fenced, "memory_limit": "8M"}, workdir)


# --------------------------------------------------------------------------- cpu


@needs_cgroups
async def test_cpu_limit_caps_cpu_time(
    workdir: str, kernel_factory: Any, fenced: dict[str, Any]
) -> None:
    spec = await prepare({**fenced, "cpu_limit": 0.25}, workdir)
    kernel = await kernel_factory(spec)
    code = (
        "import time\n"
        "t0, c0 = time.monotonic(), time.process_time()\n"
        "while time.monotonic() - t0 < 1.5: pass\n"
        "print(round((time.process_time() - c0) / (time.monotonic() - t0), 2))"
    )
    reply, out = await kernel.run(code)
    assert reply["status"] == "ok"
    share = float(out.strip())
    assert share < 0.45, f"a 0.25 CPU kernel used {share} CPU"


async def test_cpu_limit_refused_without_cgroups(
    workdir: str, monkeypatch: pytest.MonkeyPatch, fenced: dict[str, Any]
) -> None:
    without_cgroups(monkeypatch)
    with pytest.raises(EnvironmentBuildError, match=r"cpu_limit=0.5.*RLIMIT_CPU"):
        await prepare({**fenced, "cpu_limit": 0.5}, workdir)


# --------------------------------------------------------------------------- network


@needs_root
async def test_no_network_blocks_outside_but_kernel_answers(
    workdir: str, kernel_factory: Any, fenced: dict[str, Any]
) -> None:
    spec = await prepare({**fenced, "network": False}, workdir)
    assert spec.transport == "ipc" and "no network" in spec.description
    kernel = await kernel_factory(spec)
    # TEST-NET-1: never routable; inside the namespace there is no route at all.
    code = (
        "import socket, time\n"
        "s = socket.socket(); s.settimeout(3); t = time.monotonic()\n"
        "try:\n    s.connect(('192.0.2.1', 80)); print('connected')\n"
        "except OSError as exc:\n    print(exc.errno, round(time.monotonic() - t, 1))\n"
    )
    _, out = await kernel.run(code)
    errno, _seconds = out.split()
    assert errno == "101", out  # ENETUNREACH: no route at all (a timeout has no errno)
    loopback = (
        "import socket\n"
        "srv = socket.socket(); srv.bind(('127.0.0.1', 0)); srv.listen()\n"
        "cli = socket.create_connection(srv.getsockname(), timeout=2)\n"
        "print(sorted(n for _, n in socket.if_nameindex()))"
    )
    assert await kernel.value("'x'") == "x"
    _, out = await kernel.run(loopback)
    assert out.strip() == "['lo']"
    own = Path(f"/proc/{kernel.handle.pid}/ns/net").resolve()
    assert own != Path("/proc/self/ns/net").resolve()


# --------------------------------------------------------------------------- user


@needs_root
async def test_user_that_does_not_exist_fails_at_deploy(workdir: str) -> None:
    with pytest.raises(EnvironmentBuildError, match=r"no-such-user-kx.*useradd"):
        await prepare({"user": "no-such-user-kx"}, workdir)


@needs_root
async def test_user_who_cannot_read_the_interpreter_fails_at_deploy(
    workdir: str, test_user: str
) -> None:
    python = os.path.realpath(sys.executable)
    if os.access(python, os.X_OK) and not python.startswith("/root/"):
        pytest.skip("the bridge interpreter is readable by everyone here")
    with pytest.raises(EnvironmentBuildError, match=rf"{test_user}.*must be able to read"):
        await prepare({"user": test_user}, workdir)


def test_explain_death_ignores_unwrapped_commands() -> None:
    spec = LaunchSpec(argv=("python", "-m", "kernelexec.kernel", "-f", "{connection_file}"))
    assert envs.explain_death(spec, 12345) is None
    envs.release_kernel(spec, 12345)


async def test_cleanup_is_safe_per_kernel(workdir: str, fenced: dict[str, Any]) -> None:
    """LocalKernel.shutdown calls spec.cleanup for each kernel: siblings must survive it."""
    if not (ROOT and HAS_CGROUPS):
        pytest.skip("needs writable cgroups")
    spec = await prepare({**fenced, "memory_limit": "300M"}, workdir)
    first, second = LocalKernel(spec), LocalKernel(spec)
    await asyncio.gather(first.start(), second.start())
    try:
        await first.shutdown(now=True)
        assert second.is_alive()
        reply = await second.execute("1 + 1", {})
        assert reply["status"] == "ok"
        second_cgroups = [
            cg.kernel_dir(second.pid or 0) for cg in sandbox.kernel_cgroups(spec.argv)
        ]
        assert all(d.is_dir() for d in second_cgroups)
    finally:
        await second.shutdown(now=True)


@needs_root
def test_unprivileged_wrapper_leaves_the_network_through_a_user_namespace() -> None:
    """A bridge that is not root gets no network through CLONE_NEWUSER | CLONE_NEWNET."""
    python = "/usr/bin/python3"
    package_parent = str(Path(sandbox.__file__).resolve().parents[2])
    if not os.path.exists(python) or shutil.which("su") is None:
        pytest.skip("needs /usr/bin/python3 and su")
    probe = (
        "import os, socket\n"
        "s = socket.socket()\n"
        "try:\n    s.connect(('192.0.2.1', 80)); print('connected')\n"
        "except OSError as exc:\n"
        "    print(os.getuid(), exc.errno, [n for _, n in socket.if_nameindex()])"
    )
    command = (
        f"cd / && PYTHONPATH={package_parent} {python} -m kernelexec.sandbox --no-network -- "
        f'{python} -c "$PROBE"'
    )
    done = subprocess.run(
        ["su", "-s", "/bin/sh", "nobody", "-c", command],
        env={**os.environ, "PROBE": probe},
        capture_output=True,
        text=True,
        check=False,
    )
    if "cannot create a network namespace" in done.stderr:
        pytest.skip(f"unprivileged user namespaces are disabled here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().split(None, 2) == ["65534", "101", "['lo']"]


# --------------------------------------------------------------------------- sandbox as root
# docs/security.md, "Sandbox as root": what code running as env.user, or a root kernel, tried.

#: In a kernel: the directory of its connection file copy (the kernel user's own directory).
USER_DIR = "import os, sys; user_dir = os.path.dirname(sys.argv[sys.argv.index('-f') + 1])\n"


@pytest.fixture
def root_file() -> Iterator[Path]:
    """A root-only file (0600, known content) in a root directory the kernel user may enter."""
    directory = Path(tempfile.mkdtemp(prefix="kx-test-target-"))
    directory.chmod(0o755)
    target = directory / "k4194000.json"  # named like a kernel file of a dead pid, too
    target.write_text("root's secret\n")
    target.chmod(0o600)
    yield target
    shutil.rmtree(directory, ignore_errors=True)


def assert_untouched(target: Path) -> None:
    info = target.lstat()
    assert (info.st_uid, info.st_gid, oct(info.st_mode & 0o7777)) == (0, 0, "0o600")
    assert target.read_text() == "root's secret\n"


@needs_root
@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"network": False}, "env.network=false"),
        ({"memory_limit": "300M"}, "env.memory_limit=300M"),
        ({"cpu_limit": 0.5}, "env.cpu_limit=0.5"),
    ],
)
async def test_a_root_kernel_cannot_be_fenced_in_so_deploy_refuses(
    workdir: str, env: dict[str, Any], named: str
) -> None:
    """Without env.user a root bridge's kernel is root: it left its network namespace with
    setns(/proc/<ppid>/ns/net) and its memory cgroup through cgroup.procs (even without
    capabilities uid 0 may write root's 0644 files): such a fence is refused at deploy."""
    with pytest.raises(EnvironmentBuildError, match=rf"{re.escape(named)}.*root.*env\.user"):
        await prepare(env, workdir)


@needs_root
def test_the_wrapper_refuses_fences_for_root_without_user() -> None:
    done = subprocess.run(
        [sys.executable, "-m", sandbox.WRAPPER_MODULE, "--no-network", "--", "true"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == sandbox.EXIT_SANDBOX_FAILED
    assert "--no-network as root need --user" in done.stderr


def hierarchy_root(directory: Path) -> Path:
    while (directory.parent / "cgroup.procs").exists():
        directory = directory.parent
    return directory


@needs_cgroups
async def test_a_user_kernel_cannot_leave_its_network_or_cgroup(
    workdir: str, kernel_factory: Any, fenced: dict[str, Any]
) -> None:
    env = {**fenced, "network": False, "memory_limit": "300M", "cpu_limit": 1}
    spec = await prepare(env, workdir)
    kernel = await kernel_factory(spec)
    pid = kernel.handle.pid or 0
    cgroups = sandbox.kernel_cgroups(spec.argv)
    assert {cg.kind for cg in cgroups} >= {"cpu"} and len(cgroups) == 2
    # its pool's directory, the kernelexec directory, the hierarchy's root
    targets = [
        str(directory / "cgroup.procs")
        for cg in cgroups
        for directory in (Path(cg.path), Path(cg.path).parent, hierarchy_root(Path(cg.path)))
    ]
    assert all(os.path.exists(t) for t in targets), targets
    code = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "tried = []\n"
        "for ns in ('/proc/1/ns/net', f'/proc/{os.getppid()}/ns/net'):\n"
        "    try:\n"
        "        fd = os.open(ns, os.O_RDONLY)\n"
        "        tried.append(libc.setns(fd, 0x40000000) == 0 and 'entered' or 'refused')\n"
        "    except OSError as exc:\n"
        "        tried.append(exc.errno)\n"
        f"for procs in {targets!r}:\n"
        "    try:\n"
        "        open(procs, 'w').write(str(os.getpid())); tried.append('moved')\n"
        "    except OSError as exc:\n"
        "        tried.append(exc.errno)\n"
        "status = dict(l.split(':\\t') for l in open('/proc/self/status').read().splitlines())\n"
        "print(tried, [status[k].strip() for k in "
        "('CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb', 'NoNewPrivs')])\n"
    )
    reply, out = await kernel.run(code)
    assert reply["status"] == "ok", reply
    refused = [13] * (2 + len(targets))  # EACCES, every one
    assert out.strip() == f"{refused} " + str(["0" * 16] * 5 + ["1"]), out
    own = Path(f"/proc/{pid}/ns/net").resolve()
    assert own != Path("/proc/self/ns/net").resolve()
    for cg in cgroups:
        assert str(pid) in (cg.kernel_dir(pid) / "cgroup.procs").read_text().split()


@needs_root
async def test_a_planted_symlink_for_the_next_connection_file_is_not_followed(
    workdir: str, kernel_factory: Any, fenced: dict[str, Any], root_file: Path
) -> None:
    """The kernel user plants k<pid>.json symlinks for the next pids and crashes its kernel:
    the restart (root) once wrote and chowned the target; now it replaces the symlink.
    (After pid_max, Linux goes on from 300.)"""
    spec = await prepare(fenced, workdir)
    kernel = await kernel_factory(spec)
    code = USER_DIR + (
        "last = int(open('/proc/sys/kernel/ns_last_pid').read())\n"
        "top = int(open('/proc/sys/kernel/pid_max').read())\n"
        "pids = [last + i if last + i < top else 300 + last + i - top for i in range(1, 3001)]\n"
        "for pid in pids:\n"
        f"    os.symlink({str(root_file)!r}, os.path.join(user_dir, f'k{{pid}}.json'))\n"
        "print(user_dir, ','.join(map(str, pids)))"
    )
    reply, out = await kernel.run(code)
    assert reply["status"] == "ok", reply
    user_dir, planted = out.split()
    with pytest.raises(KernelDiedError):
        await kernel.run("import os; os._exit(1)")
    await kernel.handle.restart()
    new_pid = kernel.handle.pid or 0
    assert str(new_pid) in planted.split(","), "the restart used a planted pid"
    copy = Path(user_dir) / f"k{new_pid}.json"
    assert copy.is_file() and not copy.is_symlink()
    assert copy.stat().st_uid == pwd.getpwnam(fenced["user"]).pw_uid
    assert await kernel.value("'restarted'") == "restarted"
    assert_untouched(root_file)


@needs_root
async def test_the_kernel_user_cannot_swap_its_runtime_directory(
    workdir: str, kernel_factory: Any, fenced: dict[str, Any], root_file: Path
) -> None:
    """The user once owned the runtime directory's entry (in sticky /tmp): it renamed it and
    put a symlink to a root directory there, so root's clean-up deleted k<pid> files in it.
    Now root's directory holds the user's: neither can be renamed by the user."""
    spec = await prepare(fenced, workdir)
    kernel = await kernel_factory(spec)
    code = USER_DIR + (
        "tried = []\n"
        "for victim in (user_dir, os.path.dirname(user_dir)):\n"
        "    try:\n"
        "        os.rename(victim, victim + '.moved')\n"
        f"        os.symlink({str(root_file.parent)!r}, victim); tried.append('swapped')\n"
        "    except OSError as exc:\n"
        "        tried.append(exc.errno)\n"
        "print(tried)"
    )
    reply, out = await kernel.run(code)
    assert reply["status"] == "ok", reply
    assert out.strip() in ("[13, 1]", "[13, 13]"), out  # EACCES; EPERM in a sticky /tmp
    with pytest.raises(KernelDiedError):
        await kernel.run("import os; os._exit(1)")
    await kernel.handle.restart()
    assert await kernel.value("'restarted'") == "restarted"
    await kernel.handle.shutdown(now=True)
    assert spec.cleanup is not None
    spec.cleanup()
    assert_untouched(root_file)


@needs_root
async def test_a_user_kernel_gets_an_allow_listed_environment(
    workdir: str, kernel_factory: Any, fenced: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NODE_RED_CREDENTIAL_SECRET", "s3cret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cret")
    monkeypatch.setenv("KERNELEXEC_TOKEN", "s3cret")
    monkeypatch.setenv("KERNELEXEC_PREWARM", "1")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    spec = await prepare(fenced, workdir)
    kernel = await kernel_factory(spec)
    seen = await kernel.value("sorted(__import__('os').environ.items())")
    names = {name for name, _ in eval(seen)}
    assert "s3cret" not in seen, seen
    assert {"PATH", "HOME", "LC_ALL", "KERNELEXEC_PREWARM", "PYTHONPATH"} <= names, names
    allowed = set(sandbox.ENV_ALLOWED) | {"PYTHONPATH", "VIRTUAL_ENV"}
    inherited = {n for n in names if n in os.environ}  # ipykernel sets PAGER, CLICOLOR...
    leaked = {n for n in inherited if n not in allowed}
    assert not {n for n in leaked if not n.startswith(sandbox.ENV_ALLOWED_PREFIXES)}, leaked


def test_allowed_environment_keeps_the_list_and_drops_the_rest() -> None:
    environ = {
        "PATH": "/bin",
        "HOME": "/root",
        "LANG": "C",
        "LC_CTYPE": "C",
        "TZ": "UTC",
        "JPY_SESSION_NAME": "x",
        "KERNELEXEC_BLOB_DIR": "/dev/shm",
        "KERNELEXEC_TOKEN": "t",
        "KERNELEXEC_GATEWAY_TOKEN": "t",
        "NODE_RED_CREDENTIAL_SECRET": "s",
        "PYTHONPATH": "/lib",
        "PYTHONSTARTUP": "/evil.py",
        "LD_PRELOAD": "/evil.so",
    }
    kept = sandbox.allowed_environment(environ, keep=("PYTHONPATH",))
    assert sorted(kept) == [
        "HOME", "JPY_SESSION_NAME", "KERNELEXEC_BLOB_DIR", "LANG", "LC_CTYPE", "PATH",
        "PYTHONPATH", "TZ",
    ]  # fmt: skip


@needs_root
async def test_a_user_pool_starts_kernels_again_after_its_last_one_is_gone(
    workdir: str, fenced: dict[str, Any], root_file: Path
) -> None:
    """The runtime directory goes with the pool's last kernel; the next kernel makes it again
    (root's, 0711), as it makes its cgroup again. A symlink squatting its name meanwhile (in
    sticky /tmp anyone may create one) is refused, neither followed nor cleaned through."""
    spec = await prepare(fenced, workdir)
    runtime_dir = spec.argv[spec.argv.index("--runtime-dir") + 1]
    for _round in range(2):
        kernel = LocalKernel(spec)
        await kernel.start()
        try:
            assert (await kernel.execute("1 + 1", {}))["status"] == "ok"
        finally:
            await kernel.shutdown(now=True)
        assert not os.path.exists(runtime_dir), "removed with the last kernel"
    (root_file.parent / "kernel").mkdir()
    (root_file.parent / "kernel" / "k4194001.json").write_text("root's too\n")
    os.symlink(root_file.parent, runtime_dir)
    try:
        kernel = LocalKernel(spec)
        with pytest.raises(KernelDiedError):
            await kernel.start()
        await kernel.shutdown(now=True)
        assert (root_file.parent / "kernel" / "k4194001.json").read_text() == "root's too\n"
        assert_untouched(root_file)
    finally:
        os.unlink(runtime_dir)


async def test_a_user_pools_state_frames_name_its_kernel_user(test_user: str) -> None:
    """pool_state carries kernel_uid for a pool of env.user kernels (a root Node-RED reads their
    output files, owned by that uid, and no other user's); none without env.user."""
    from kernelexec.config import PoolConfig
    from kernelexec.server.registry import PoolEntry, PoolRegistry, default_pool_factory

    registry = PoolRegistry(default_pool_factory)
    sandboxed = PoolConfig.from_dict("u", {"code": "return msg", "env": {"user": test_user}})
    plain = PoolConfig.from_dict("p", {"code": "return msg"})
    frame = PoolEntry(sandboxed, owner=None, registry=registry).state_frame()  # type: ignore[arg-type]
    assert frame["kernel_uid"] == pwd.getpwnam(test_user).pw_uid
    assert "kernel_uid" not in PoolEntry(plain, owner=None, registry=registry).state_frame()  # type: ignore[arg-type]
