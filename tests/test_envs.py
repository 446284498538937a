"""Managed environments, interpreters and working directories, with real installs and kernels.

One environment (ipykernel + ``six``, a tiny pure-Python package) is built per session in a
temporary KERNELEXEC_ENV_DIR and reused by every test; with uv this takes about a second.
Tests that install from the package registry are skipped when it cannot be reached.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kernelexec import envs
from kernelexec.config import EnvConfig, PoolConfig
from kernelexec.errors import ConfigError, EnvironmentBuildError
from kernelexec.handles.base import LaunchSpec
from kernelexec.handles.local import LocalKernel

BASE_PYTHON = "/usr/bin/python3.11" if os.path.exists("/usr/bin/python3.11") else sys.executable
REQUIREMENTS = ["six"]


def registry_reachable() -> bool:
    import urllib.request

    try:
        urllib.request.urlopen("https://pypi.org/simple/six/", timeout=5).close()
    except OSError:
        return False
    return True


needs_registry = pytest.mark.skipif(not registry_reachable(), reason="package index unreachable")


@pytest.fixture(scope="session")
def env_dir() -> Iterator[Path]:
    """A private KERNELEXEC_ENV_DIR, readable by other users (for the user option)."""
    path = Path(tempfile.mkdtemp(prefix="kx-test-envs-"))
    path.chmod(0o755)
    old = os.environ.get(envs.ENV_DIR_VAR)
    os.environ[envs.ENV_DIR_VAR] = str(path)
    yield path
    if old is None:
        os.environ.pop(envs.ENV_DIR_VAR, None)
    else:
        os.environ[envs.ENV_DIR_VAR] = old
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def built(env_dir: Path) -> tuple[envs.EnvInfo, float, list[str]]:
    """The session's environment: (info, seconds to build, progress lines)."""
    if not registry_reachable():
        pytest.skip("package index unreachable")
    lines: list[str] = []
    started = time.monotonic()
    info = asyncio.run(envs.ensure_env(BASE_PYTHON, REQUIREMENTS, lines.append))
    return info, time.monotonic() - started, lines


@pytest.fixture
def workdir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="kx-test-work-")
    os.chmod(path, 0o755)
    yield os.path.join(path, "node")
    shutil.rmtree(path, ignore_errors=True)


async def prepare(env: dict[str, Any], workdir: str = "", node_id: str = "envs") -> LaunchSpec:
    lines: list[str] = []
    return await envs.prepare_launch(
        EnvConfig.from_dict(env), node_id=node_id, workdir=workdir, progress=lines.append
    )


async def run_in_kernel(spec: LaunchSpec, code: str) -> str:
    """Start a real kernel from ``spec``, run ``code``, return its stdout, shut it down."""
    kernel = LocalKernel(spec, name="envs-test")
    out: list[str] = []
    kernel.on_stream = lambda name, text: out.append(text) if name == "stdout" else None
    await kernel.start()
    try:
        reply = await kernel.execute(code + "\nimport sys; sys.stdout.flush()", {})
        assert reply["status"] == "ok", reply
        deadline = time.monotonic() + 30  # IOPub is not ordered with the shell reply
        while not out and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return "".join(out)
    finally:
        await kernel.shutdown(now=True)


# --------------------------------------------------------------------------- keys


def test_requirements_are_normalized() -> None:
    lines = ["  six  ", "# comment", "", "Tomli == 2.0.1   # pinned", "six", "numpy>=1"]
    assert envs.normalize_requirements(lines) == ("numpy>=1", "six", "Tomli == 2.0.1")


@pytest.mark.parametrize(
    "line", ["-r /etc/shadow", "--index-url x", "-e /path", "  -e .", "six --hash=sha256:ab"]
)
def test_installer_options_in_requirements_are_refused_naming_the_line(line: str) -> None:
    """A line starting with '-' reached uv/pip (running as the bridge's user) as an option."""
    wanted = rf"env\.requirements: the line '{re.escape(line.strip())}' carries an installer option"
    with pytest.raises(ConfigError, match=wanted + r".*UV_INDEX_URL or PIP_INDEX_URL"):
        envs.normalize_requirements(["six", line])


async def test_installer_options_are_refused_before_any_build(env_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"'-r /etc/shadow'"):
        await envs.ensure_env(BASE_PYTHON, ["six", "-r /etc/shadow"], lambda _t: None)
    assert not list(env_dir.glob(".build-*"))


def test_url_fragments_are_kept_and_comments_dropped() -> None:
    url = "pkg @ https://example.invalid/p.whl#sha256=abc"
    assert envs.normalize_requirements([url, "six # pinned later", "#x", "a-b==1.0-1"]) == (
        "a-b==1.0-1", url, "six",
    )  # fmt: skip


def test_key_depends_on_interpreter_and_requirements() -> None:
    interp = envs.Interpreter("/p", "/usr/bin/python3.11", "3.11.2 (main)", "3.11.2")
    other = envs.Interpreter("/p", "/usr/bin/python3.12", "3.12.0 (main)", "3.12.0")
    key = envs.env_key(interp, ["six", "tomli"])
    assert key == envs.env_key(interp, ["tomli", " six", "# x"])
    assert key != envs.env_key(interp, ["six"])
    assert key != envs.env_key(other, ["six", "tomli"])


def test_directories_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(envs.ENV_DIR_VAR, "/srv/kx/envs")
    monkeypatch.setenv(envs.WORK_DIR_VAR, "/srv/kx/work")
    assert envs.env_root() == Path("/srv/kx/envs")
    assert envs.node_workdir("a1b2.c3") == Path("/srv/kx/work/a1b2.c3")
    assert envs.node_workdir("../evil") == Path("/srv/kx/work/_evil")
    assert envs.node_workdir("n", "/data/n") == Path("/data/n")
    monkeypatch.delenv(envs.ENV_DIR_VAR)
    monkeypatch.setenv("HOME", "/home/nr")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert envs.env_root() == Path("/home/nr/.cache/kernelexec/envs")


# --------------------------------------------------------------------------- build and reuse


def has_bytecode(python: Path, module: str) -> bool:
    """Whether the environment holds ``module``'s compiled bytecode (the module not imported,
    nothing written: what a kernel user who cannot write __pycache__ finds)."""
    probe = (
        "import importlib.util as u, os, sys\n"
        f"origin = u.find_spec({module!r}).origin\n"
        "sys.exit(0 if os.path.exists(u.cache_from_source(origin)) else 1)"
    )
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([str(python), "-c", probe], env=env, check=False).returncode == 0


@needs_registry
def test_environment_is_built_with_ipykernel_and_requirements(
    built: tuple[envs.EnvInfo, float, list[str]],
) -> None:
    info, seconds, lines = built
    assert info.requirements == ("six",)
    assert info.python_bin.exists()
    site = subprocess.run(
        [str(info.python_bin), "-c", "import six, ipykernel; print(ipykernel.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(site.stdout.split(".")[0]) in (6, 7)
    assert has_bytecode(info.python_bin, "ipykernel.kernelapp"), "uv compiles, as pip does"
    assert any(line.startswith("installing (") and "six" in line for line in lines), lines
    assert not list(info.path.parent.glob(".build-*")), "no half-built directory left"
    meta = json.loads((info.path / envs.MARKER).read_text())
    assert meta["build_seconds"] <= seconds + 0.5


@needs_registry
async def test_second_prepare_reuses_the_environment(
    built: tuple[envs.EnvInfo, float, list[str]], workdir: str
) -> None:
    info, _, _ = built
    marker = (info.path / envs.MARKER).read_text()
    lines: list[str] = []
    spec = await envs.prepare_launch(
        EnvConfig.from_dict({"python": BASE_PYTHON, "requirements": "six\n# again\n"}),
        node_id="reuse",
        workdir=workdir,
        progress=lines.append,
    )
    assert (info.path / envs.MARKER).read_text() == marker, "not rebuilt"
    assert any("reused" in line for line in lines)
    assert spec.argv[0] == str(info.python_bin)


@needs_registry
async def test_kernel_runs_in_the_environment_with_kernelexec_on_its_path(
    built: tuple[envs.EnvInfo, float, list[str]], workdir: str
) -> None:
    info, _, _ = built
    spec = await prepare({"python": BASE_PYTHON, "requirements": REQUIREMENTS}, workdir)
    out = await run_in_kernel(
        spec,
        "import sys, six, kernelexec, os\n"
        "print(sys.prefix, os.path.dirname(os.path.dirname(kernelexec.__file__)), six.PY3)",
    )
    prefix, shim, py3 = out.split()
    assert prefix == str(info.path) and py3 == "True"
    assert sorted(os.listdir(shim)) == ["kernelexec"], "only the kernelexec package is added"


@needs_registry
async def test_concurrent_asks_build_once(env_dir: Path) -> None:
    requirements = ["tomli==2.0.1"]
    lines: list[list[str]] = [[], [], []]
    results = await asyncio.gather(
        *(envs.ensure_env(BASE_PYTHON, requirements, lines[i].append) for i in range(3))
    )
    assert len({r.key for r in results}) == 1
    builds = [line for progress in lines for line in progress if "built in" in line]
    assert len(builds) == 1, lines
    assert envs.remove_env(results[0].key)
    assert not (env_dir / results[0].key).exists()


@needs_registry
async def test_bad_requirement_reports_the_installer_error(env_dir: Path) -> None:
    name = "kernelexec-no-such-package-zz9"
    with pytest.raises(EnvironmentBuildError) as caught:
        await prepare({"python": BASE_PYTHON, "requirements": [f"{name}==1.0"]})
    assert caught.value.code == "ENV_FAILED"
    assert name in caught.value.message and "not found" in caught.value.message
    assert not list(env_dir.glob(".build-*")), "the failed build is removed"


# --------------------------------------------------------------------------- interpreters


async def test_interpreter_without_ipykernel_says_what_to_install(tmp_path: Path) -> None:
    venv = tmp_path / "bare"
    subprocess.run([BASE_PYTHON, "-m", "venv", "--without-pip", str(venv)], check=True)
    with pytest.raises(EnvironmentBuildError, match=r"cannot import ipykernel.*pip install"):
        await prepare({"python": str(venv / "bin/python")})


async def test_missing_interpreter_is_named() -> None:
    with pytest.raises(EnvironmentBuildError, match=r"/opt/nowhere/python3.*not found"):
        await prepare({"python": "/opt/nowhere/python3"})


async def test_interpreter_with_ipykernel_runs_the_kernel(workdir: str) -> None:
    spec = await prepare({"python": sys.executable}, workdir)
    assert spec.argv[0] == sys.executable
    out = await run_in_kernel(spec, "import sys; print(sys.executable)")
    assert out.strip() == sys.executable


# --------------------------------------------------------------------------- work dirs


async def test_files_land_in_the_node_directory() -> None:
    spec = await prepare({}, node_id="files-node")
    expected = envs.node_workdir("files-node")
    assert spec.cwd == str(expected)
    out = await run_in_kernel(
        spec, "import os; open('out.txt', 'w').write('hi'); print(os.getcwd())"
    )
    assert out.strip() == str(expected)
    assert (expected / "out.txt").read_text() == "hi"
    spec = await prepare({}, node_id="files-node")  # a redeploy keeps the files
    assert (expected / "out.txt").exists()
    assert envs.remove_workdir("files-node") and not expected.exists()


# --------------------------------------------------------------------------- user


@needs_registry
async def test_user_option_runs_the_kernel_as_that_user(
    built: tuple[envs.EnvInfo, float, list[str]], workdir: str, test_user: str
) -> None:
    env = {"python": BASE_PYTHON, "requirements": REQUIREMENTS, "user": test_user}
    spec = await prepare(env, workdir)
    assert spec.transport == "ipc"
    uid = pwd.getpwnam(test_user).pw_uid
    out = await run_in_kernel(
        spec, "import os; open('mine.txt', 'w').write('x'); print(os.getuid(), os.getgid())"
    )
    assert out.split()[0] == str(uid)
    assert os.stat(os.path.join(workdir, "mine.txt")).st_uid == uid
    assert os.stat(workdir).st_uid == uid


@needs_registry
async def test_user_and_no_network_and_limits_together(
    built: tuple[envs.EnvInfo, float, list[str]], workdir: str, test_user: str
) -> None:
    from kernelexec import sandbox

    if not (sandbox.find_controller("memory") and sandbox.find_controller("cpu")):
        pytest.skip("needs cgroups")
    env = {
        "python": BASE_PYTHON,
        "requirements": REQUIREMENTS,
        "user": test_user,
        "network": False,
        "memory_limit": "256M",
        "cpu_limit": 1,
    }
    spec = await prepare(env, workdir)
    code = (
        "import os, socket\n"
        "s = socket.socket()\n"
        "try:\n    s.connect(('192.0.2.1', 80)); r = 'connected'\n"
        "except OSError as e:\n    r = e.errno\n"
        "print(os.getuid(), r)"
    )
    out = await run_in_kernel(spec, code)
    assert out.split() == [str(pwd.getpwnam(test_user).pw_uid), "101"]


# --------------------------------------------------------------------------- CLI


@needs_registry
def test_cli_build_list_remove(
    env_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kernelexec.commands import env as env_command

    parser = __import__("argparse").ArgumentParser()
    env_command.register(parser.add_subparsers())
    req_file = tmp_path / "requirements.txt"
    req_file.write_text("# tiny\ntomli==2.0.1\n")

    def cli(*argv: str) -> int:
        args = parser.parse_args(["env", *argv])
        code: int = args.func(args)
        return code

    assert cli("build", "--python", BASE_PYTHON, "-r", str(req_file)) == 0
    key = capsys.readouterr().out.split()[0]
    assert cli("list", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    row = next(r for r in rows if r["key"] == key)
    assert row["requirements"] == ["tomli==2.0.1"] and row["size"] > 0
    assert cli("list") == 0
    assert key in capsys.readouterr().out
    assert cli("remove", key) == 0
    assert not (env_dir / key).exists()
    assert cli("remove", key) == 1
    assert cli("build", "--python", BASE_PYTHON, "--req", "kernelexec-no-such-pkg-zz9") == 1
    assert "kernelexec-no-such-pkg-zz9" in capsys.readouterr().err


def test_cli_clean_work(capsys: pytest.CaptureFixture[str]) -> None:
    from kernelexec.commands import env as env_command

    parser = __import__("argparse").ArgumentParser()
    env_command.register(parser.add_subparsers())
    path = envs.node_workdir("to-clean")
    path.mkdir(parents=True)
    (path / "f").write_text("x")
    args = parser.parse_args(["env", "clean-work", "to-clean"])
    assert args.func(args) == 0 and not path.exists()
    args = parser.parse_args(["env", "clean-work", "to-clean"])
    assert args.func(args) == 1


@pytest.mark.slow
@needs_registry
async def test_pip_fallback_builds_the_same_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(envs.ENV_DIR_VAR, str(tmp_path / "pip-envs"))
    monkeypatch.setenv(envs.INSTALLER_VAR, "pip")
    info = await envs.ensure_env(BASE_PYTHON, REQUIREMENTS, lambda _t: None)
    assert info.installer == "pip"
    check = [str(info.python_bin), "-c", "import six, ipykernel"]
    assert subprocess.run(check, check=False).returncode == 0
    assert has_bytecode(info.python_bin, "ipykernel.kernelapp")
    pip_script = (info.path / "bin/pip").read_text()
    assert f"{info.path}/bin/python" in pip_script and ".build-" not in pip_script
    pip = subprocess.run([str(info.path / "bin/pip"), "--version"], check=False)
    assert pip.returncode == 0, "scripts point at the final path after the rename"


# --------------------------------------------------------------------------- through the pool


@needs_registry
async def test_pool_in_isolated_managed_env_recovers_after_oom(
    built: tuple[envs.EnvInfo, float, list[str]], workdir: str, test_user: str
) -> None:
    from kernelexec import sandbox
    from kernelexec.pool import MemoryHooks, make_pool

    if os.geteuid() != 0 or not sandbox.find_controller("memory"):
        pytest.skip("needs root and a memory cgroup")
    code = (
        "import six, socket\n"
        "if msg['payload'] == 'big':\n"
        "    block = bytearray(600 * 2**20)\n"
        "s = socket.socket()\n"
        "try:\n    s.connect(('192.0.2.1', 80)); net = 'up'\n"
        "except OSError:\n    net = 'down'\n"
        "msg['payload'] = [six.__name__, net]\n"
        "return msg"
    )
    env = {
        "python": BASE_PYTHON,
        "requirements": REQUIREMENTS,
        "memory_limit": "300M",
        "network": False,
        "user": test_user,  # a root bridge's kernel is fenced in only as another user
    }
    config = PoolConfig.from_dict("iso-pool", {"code": code, "env": env, "workdir": workdir})
    pool = make_pool(config, MemoryHooks())
    await pool.start()
    try:
        first = await pool.submit("r1", {"payload": 1})
        assert first["error"] is None and first["outputs"][0][0]["payload"] == ["six", "down"]
        big = await pool.submit("r2", {"payload": "big"})
        assert big["error"]["code"] == "KERNEL_DIED"
        assert "memory limit" in big["error"]["message"]
        after = await pool.submit("r3", {"payload": 3})
        assert after["error"] is None and after["outputs"][0][0]["payload"] == ["six", "down"]
    finally:
        await pool.close()
    assert envs.remove_workdir("iso-pool", workdir)


@needs_registry
async def test_a_pool_running_as_another_user_reads_the_messages_blob_files(
    built: tuple[envs.EnvInfo, float, list[str]], workdir: str, test_user: str
) -> None:
    from kernelexec.kernel import blobs
    from kernelexec.pool import MemoryHooks, make_pool

    env = {"python": BASE_PYTHON, "requirements": REQUIREMENTS, "user": test_user}
    config = PoolConfig.from_dict(
        "user-blobs",
        {"code": "return {'payload': len(msg['payload']), 'back': msg['payload'][::-1]}",
         "env": env, "workdir": workdir},
    )
    pool = make_pool(config, MemoryHooks())
    data = os.urandom(200_000)
    entry = blobs.write_blob(data, "ub1")  # 0600, owned by the bridge (root)
    result: dict[str, Any] = {}
    try:
        await pool.start()
        result = await pool.submit("ub1", {"payload": blobs.index_ref(0)}, [entry])
        assert result["error"] is None, result["error"]
        assert result["outputs"][0][0]["payload"] == 200_000
        # the output file is the kernel user's; root reads it because the launch trusted it
        [output] = result[blobs.TABLE]
        path = os.path.join(blobs.blob_dir(), output[blobs.NAME])
        assert os.stat(path).st_uid == pwd.getpwnam(test_user).pw_uid
        assert blobs.read_blob(output, "ub1") == data[::-1]
    finally:
        blobs.remove_table([entry, *result.get(blobs.TABLE, [])], "ub1")
        await pool.close()


# --------------------------------------------------------------------------- files of the user


@pytest.fixture
def root_secret() -> Iterator[Path]:
    """A root-only file (0600) in a root directory (0755)."""
    directory = Path(tempfile.mkdtemp(prefix="kx-test-target-"))
    directory.chmod(0o755)
    secret = directory / "secret"
    secret.write_text("root's secret\n")
    secret.chmod(0o600)
    yield secret
    shutil.rmtree(directory, ignore_errors=True)


def owner_and_mode(path: Path) -> tuple[int, int, int]:
    info = path.lstat()
    return info.st_uid, info.st_gid, info.st_mode & 0o7777


def test_a_workdir_swapped_for_a_symlink_is_refused_not_chowned(
    test_user: str, root_secret: Path
) -> None:
    """The kernel user owns the directory holding a node's workdir (an explicit workdir in
    its home) and replaces the workdir with a symlink to a root directory: the next deploy
    chowned that directory and its files to the user; now it refuses."""
    entry = pwd.getpwnam(test_user)
    parent = Path(tempfile.mkdtemp(prefix="kx-test-userdir-"))
    try:
        os.chown(parent, entry.pw_uid, entry.pw_gid)
        node = parent / "node"
        node.symlink_to(root_secret.parent)
        os.lchown(node, entry.pw_uid, entry.pw_gid)
        before = [owner_and_mode(p) for p in (root_secret, root_secret.parent)]
        with pytest.raises(EnvironmentBuildError, match=r"cannot prepare the working directory"):
            envs.paths.prepare_workdir(node, test_user)
        assert [owner_and_mode(p) for p in (root_secret, root_secret.parent)] == before
        assert root_secret.read_text() == "root's secret\n"
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def test_a_workdir_is_handed_over_without_following_its_symlinks(
    test_user: str, root_secret: Path, workdir: str
) -> None:
    entry = pwd.getpwnam(test_user)
    node = Path(workdir)
    (node / "sub").mkdir(parents=True)
    (node / "sub" / "data").write_text("x")
    (node / "sub" / "link").symlink_to(root_secret)
    (node / "dirlink").symlink_to(root_secret.parent)
    envs.paths.prepare_workdir(node, test_user)
    assert owner_and_mode(node) == (entry.pw_uid, entry.pw_gid, 0o700)
    for item in ("sub", "sub/data", "sub/link", "dirlink"):
        assert (node / item).lstat().st_uid == entry.pw_uid, item
    assert owner_and_mode(root_secret) == (0, 0, 0o600)
    assert owner_and_mode(root_secret.parent)[:2] == (0, 0)


def test_removing_a_workdir_swapped_for_a_symlink_removes_the_link_only(
    root_secret: Path, tmp_path: Path
) -> None:
    node = tmp_path / "node"
    node.symlink_to(root_secret.parent)
    assert envs.remove_workdir("node", str(node))
    assert not node.is_symlink() and root_secret.read_text() == "root's secret\n"


@needs_registry
async def test_a_user_pool_never_chowns_a_file_the_message_names(
    built: tuple[envs.EnvInfo, float, list[str]], workdir: str, test_user: str
) -> None:
    """The root bridge hands a `user` kernel copies it makes of the frame's own blob files
    (fchown on its fd), never a path from the message: a forged reference to a root-only file,
    or a table entry that is a symlink to it, leaves the file root's and 0600."""
    from kernelexec.kernel import blobs
    from kernelexec.pool import MemoryHooks, make_pool

    env = {"python": BASE_PYTHON, "requirements": REQUIREMENTS, "user": test_user}
    config = PoolConfig.from_dict(
        "user-forged", {"code": "return msg", "env": env, "workdir": workdir}
    )
    directory = Path(blobs.blob_dir())
    secret = directory / f"{blobs.PREFIX}1-forged_1-0"
    secret.write_text("root only")
    secret.chmod(0o600)
    link = directory / f"{blobs.PREFIX}{os.getpid()}-forged_2-0"
    link.symlink_to(secret)
    pool = make_pool(config, MemoryHooks())
    try:
        await pool.start()
        forged = {blobs.MARKER: "blob", "path": str(secret), "size": 9}
        result = await pool.submit("forged-1", {"payload": forged})
        assert result["error"]["code"] == "CONVERSION_ERROR", result
        entry = {"name": link.name, "size": 9}
        result = await pool.submit("forged-2", {"payload": blobs.index_ref(0)}, [entry])
        assert result["error"]["code"] == "CONVERSION_ERROR", result
        info = secret.stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o600)
        assert link.is_symlink() and blobs.request_blobs("forged-2") == [str(link)]
    finally:
        link.unlink()
        secret.unlink()
        await pool.close()
