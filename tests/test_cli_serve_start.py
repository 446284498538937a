"""`kernelexec serve` starts the kernel template first thing (kernelexec/cli.py), in process."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from kernelexec import cli
from kernelexec.handles import template

pytestmark = pytest.mark.skipif(not template.can_fork_kernels(), reason="no kernel template here")


def test_serve_starts_the_template_before_the_parser_and_takes_it_down_on_a_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The template's imports start before the parser imports every command; a bridge that
    refuses its arguments (a non-loopback address without --allow-remote) leaves no template
    behind."""
    monkeypatch.setenv(template.SWITCH, "1")
    at_parse: list[subprocess.Popen[bytes] | None] = []
    build_parser = cli.build_parser

    def recording_build_parser(modules: tuple[str, ...] = cli.COMMANDS) -> argparse.ArgumentParser:
        early = template._early
        at_parse.append(early[0] if early is not None else None)
        return build_parser(modules)

    monkeypatch.setattr(cli, "build_parser", recording_build_parser)
    assert cli.main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert at_parse and at_parse[0] is not None, "no template was running when the parser began"
    assert at_parse[0].poll() is not None, "the refused bridge's template is still running"
    assert template._early is None


def test_other_commands_start_no_template(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(template.SWITCH, "1")
    spawned: list[object] = []
    monkeypatch.setattr(template, "spawn", lambda env: spawned.append(env))
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    assert spawned == []


@pytest.mark.parametrize(
    ("words", "modules"),
    [
        (["serve", "--port", "0"], ("serve",)),
        (["--log-level", "DEBUG", "import", "flows.json"], ("import_",)),
        (["attach", "--list"], ("attach",)),
        ([], cli.COMMANDS),
        (["--help"], cli.COMMANDS),
        (["serv"], cli.COMMANDS),
    ],
)
def test_only_the_named_commands_module_is_loaded(
    words: list[str], modules: tuple[str, ...]
) -> None:
    """A command builds only its own parser (each module imports its own world); help and an
    unknown command see them all."""
    assert cli.command_modules(words) == modules


def test_an_unknown_command_is_refused_with_the_list_of_commands(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        cli.main(["serv"])
    err = capsys.readouterr().err
    assert "invalid choice: 'serv'" in err and "'serve'" in err and "'import'" in err


def test_what_serve_imports_before_it_spawns_the_template_is_the_standard_library_only() -> None:
    """The template is spawned before the bridge imports anything heavy: what _template_first
    needs must not pull in handles/base.py (dataclasses, inspect: ~20 ms on a deploy's path)."""
    probe = (
        "import json, sys, kernelexec.cli, kernelexec.handles.template,"
        " kernelexec.handles.environment;"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('kernelexec'))))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    assert "kernelexec.handles.base" not in loaded, loaded
    assert loaded <= {
        "kernelexec",
        "kernelexec.cli",
        "kernelexec.handles",
        "kernelexec.handles.early",
        "kernelexec.handles.environment",
        "kernelexec.handles.template",
        "kernelexec.kernel",
        "kernelexec.kernel.clone",
    }, loaded
