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


def build_parser(modules: tuple[str, ...] = COMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kernelexec", description="Run Python for Node-RED flows on IPython kernels."
    )
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in modules:
        try:
            module = importlib.import_module(f"kernelexec.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"kernelexec.commands.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    early = _template_first(words)
    try:
        parser = build_parser(command_modules(words))
        args = parser.parse_args(words)
        logging.basicConfig(
            level=str(args.log_level).upper(),
            format="%(asctime)s %(name)s %(levelname)s %(message)s",
        )
        func = getattr(args, "func", None)
        if func is None:
            parser.print_help(sys.stderr)
            return 2
        code: int = func(args)
        return code
    finally:
        if early:  # not adopted by a bridge (bad arguments, a refusal): it goes
            from .handles import template

            template.discard_early()


def command_modules(words: list[str]) -> tuple[str, ...]:
    """The command modules to load for ``words``: only the named command's when there is
    one (every module imports its own world; ``kernelexec serve`` is on a first deploy's
    path, ~0.1 s of imports shorter this way), all of them otherwise (help, a typo)."""
    for word in words:
        module = "import_" if word == "import" else word
        if module in COMMANDS:
            return (module,)
    return COMMANDS


def _template_first(words: list[str]) -> bool:
    """``kernelexec serve ...`` (how Node-RED starts the bridge): the kernel template starts
    before anything else is imported, so that its imports (~0.3 s) run beside the parser's
    and the bridge's (~0.1 s) instead of after them (kernelexec/handles/template.py)."""
    if words[:1] != ["serve"]:
        return False
    from .handles import template  # these two: the standard library only
    from .handles.environment import kernel_environment

    template.spawn_early(kernel_environment())
    return True


if __name__ == "__main__":
    sys.exit(main())
