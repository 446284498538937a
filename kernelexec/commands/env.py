"""``kernelexec env``: the managed environments and the nodes' working directories.

    kernelexec env list [--json]
    kernelexec env build [--python PY] [-r FILE ...] [--req LINE ...]
    kernelexec env remove KEY ... | --all | --unused-days N
    kernelexec env clean-work NODE_ID ... | --all
    kernelexec env check [--memory 512M] [--cpu 0.5] [--no-network] [--user NAME]

Environments live in $KERNELEXEC_ENV_DIR (default ~/.cache/kernelexec/envs), working
directories in $KERNELEXEC_WORK_DIR (default ~/.local/share/kernelexec/work); see
docs/environments.md. Exit codes: 0 success, 1 the work failed, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from typing import Any

from .. import envs
from ..config import EnvConfig
from ..errors import KernelexecError

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("env", help="manage kernel environments and work directories")
    sub = parser.add_subparsers(dest="env_command", metavar="ACTION", required=True)

    listing = sub.add_parser("list", help="list managed environments")
    listing.add_argument("--json", action="store_true", help="one JSON array")

    build = sub.add_parser("build", help="build (or reuse) the environment for requirements")
    build.add_argument("--python", help="interpreter (default: the one running kernelexec)")
    build.add_argument("-r", dest="files", action="append", default=[], metavar="FILE")
    build.add_argument("--req", dest="lines", action="append", default=[], metavar="LINE")

    remove = sub.add_parser("remove", help="delete managed environments")
    which = remove.add_mutually_exclusive_group(required=True)
    which.add_argument("keys", nargs="*", default=[], metavar="KEY")
    which.add_argument("--all", action="store_true")
    which.add_argument("--unused-days", type=float, metavar="N", help="not used for N days")

    clean = sub.add_parser("clean-work", help="delete nodes' working directories")
    nodes = clean.add_mutually_exclusive_group(required=True)
    nodes.add_argument("node_ids", nargs="*", default=[], metavar="NODE_ID")
    nodes.add_argument("--all", action="store_true")

    check = sub.add_parser("check", help="check that this host can isolate kernels so")
    check.add_argument("--memory", help="memory limit, e.g. 512M")
    check.add_argument("--cpu", type=float, help="CPUs, e.g. 0.5")
    check.add_argument("--no-network", action="store_true")
    check.add_argument("--user", help="run kernels as this user")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    actions = {
        "list": _list,
        "build": _build,
        "remove": _remove,
        "clean-work": _clean_work,
        "check": _check,
    }
    try:
        return actions[args.env_command](args)
    except KernelexecError as exc:
        sys.stderr.write(f"kernelexec env {args.env_command}: {exc.message}\n")
        return 1


def _size(num: float) -> str:
    for unit in ("B", "K", "M", "G"):
        if num < 1024 or unit == "G":
            return f"{num:.0f}{unit}" if unit == "B" else f"{num:.1f}{unit}"
        num /= 1024
    return f"{num:.1f}G"


def _ago(stamp: float) -> str:
    seconds = max(0.0, time.time() - stamp)
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= span:
            return f"{seconds / span:.0f}{unit} ago"
    return "just now"


def _list(args: argparse.Namespace) -> int:
    found = envs.list_envs()
    if args.json:
        rows = [
            {
                "key": e.key,
                "path": str(e.path),
                "python": e.python,
                "version": e.version.split()[0],
                "requirements": list(e.requirements),
                "installer": e.installer,
                "build_seconds": e.build_seconds,
                "size": e.size,
                "created": e.created,
                "last_used": e.last_used,
            }
            for e in found
        ]
        print(json.dumps(rows, indent=1))
        return 0
    if not found:
        print(f"no environments in {envs.env_root()}")
        return 0
    print(f"{'KEY':<17} {'PYTHON':<8} {'SIZE':>7} {'LAST USE':<10} PACKAGES")
    for e in found:
        packages = ", ".join(e.requirements) or "(ipykernel only)"
        version = e.version.split()[0]
        print(f"{e.key:<17} {version:<8} {_size(e.size):>7} {_ago(e.last_used):<10} {packages}")
    return 0


def _build(args: argparse.Namespace) -> int:
    lines = list(args.lines)
    for path in args.files:
        try:
            with open(path, encoding="utf-8") as handle:
                lines += handle.read().splitlines()
        except OSError as exc:
            sys.stderr.write(f"kernelexec env build: cannot read -r {path}: {exc.strerror}\n")
            return 2
    requirements = envs.normalize_requirements(lines)

    def progress(text: str) -> None:
        sys.stderr.write(f"{text}\n")

    started = time.monotonic()
    info = asyncio.run(envs.ensure_env(args.python, requirements, progress))
    seconds = time.monotonic() - started
    print(f"{info.key} {info.path} ({seconds:.1f} s)")
    return 0


def _remove(args: argparse.Namespace) -> int:
    found = envs.list_envs(with_size=False)
    if args.all:
        keys = [e.key for e in found]
    elif args.unused_days is not None:
        cutoff = time.time() - args.unused_days * 86400
        keys = [e.key for e in found if e.last_used < cutoff]
    else:
        keys = args.keys
    status = 0
    for key in keys:
        if envs.remove_env(key):
            print(f"removed {key}")
        else:
            sys.stderr.write(f"kernelexec env remove: no environment {key!r} (see env list)\n")
            status = 1
    return status


def _clean_work(args: argparse.Namespace) -> int:
    if args.all:
        root = envs.work_root()
        if root.is_dir():
            shutil.rmtree(root)
            print(f"removed {root}")
        return 0
    status = 0
    for node_id in args.node_ids:
        if envs.remove_workdir(node_id):
            print(f"removed {envs.node_workdir(node_id)}")
        else:
            sys.stderr.write(f"kernelexec env clean-work: no directory for node {node_id!r}\n")
            status = 1
    return status


def _check(args: argparse.Namespace) -> int:
    env = EnvConfig.from_dict(
        {
            "memory_limit": args.memory,
            "cpu_limit": args.cpu,
            "network": not args.no_network,
            "user": args.user,
        }
    )
    with tempfile.TemporaryDirectory(prefix="kernelexec-check-") as workdir:
        spec = asyncio.run(
            envs.prepare_launch(env, node_id="env-check", workdir=workdir, progress=lambda _t: None)
        )
        if spec.cleanup is not None:
            spec.cleanup()
    print(f"ok: {spec.description}")
    return 0
