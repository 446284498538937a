"""The ``kernelexec`` command: one subcommand per module in kernelexec/commands/.

Each module has ``register(subparsers)`` (adds its parser, with ``func=run``) and
``run(args) -> int``. Exit codes: 0 success, 1 the work failed (e.g. user code raised),
2 bad arguments.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

__all__ = ["main"]

COMMANDS = ("run", "serve", "env", "export", "import_", "attach")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kernelexec", description="Run Python for Node-RED flows on IPython kernels."
    )
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"kernelexec.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"kernelexec.commands.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=str(args.log_level).upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    code: int = func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
