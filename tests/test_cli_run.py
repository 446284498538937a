"""``kernelexec run`` as a user runs it: a subprocess, one JSON object, exit codes 0/1/2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


def kernelexec(*args: str) -> tuple[int, Any, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "kernelexec", "run", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    body = json.loads(proc.stdout) if proc.stdout.strip() else None
    return proc.returncode, body, proc.stderr


def test_run_prints_outputs_logs_and_stdout() -> None:
    code = (
        "print('hi')\nnode.warn('careful')\nnode.send({'payload': 'early'})\n"
        "return {'payload': msg['payload'] + 1}"
    )
    status, body, _ = kernelexec("-c", code, "--msg", '{"payload": 41}')
    assert status == 0
    assert body["outputs"] == [[{"payload": "early"}, {"payload": 42}]]
    assert {"level": "warn", "text": "careful"} in body["logs"]
    assert body["stdout"] == "hi\n" and body["error"] is None


def test_user_error_exits_1_with_the_users_line() -> None:
    status, body, _ = kernelexec("-c", "x = 1\nreturn msg['nope']")
    assert status == 1
    assert body["error"]["type"] == "KeyError" and body["error"]["line"] == 2


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["-c", "return msg", "--msg", "[1]"], "is not a JSON object"),
        (["-c", "return msg", "--msg", "{oops"], "not valid JSON"),
        (["-c", "return msg", "--outputs", "-1"], "config.outputs"),
        (["--code", "/nonexistent/node.py"], "cannot read"),
    ],
)
def test_bad_arguments_exit_2_and_say_what_is_wrong(args: list[str], says: str) -> None:
    status, body, stderr = kernelexec(*args)
    assert status == 2 and body is None
    assert says in stderr


def test_a_node_script_brings_its_setup_and_sample(tmp_path: Path) -> None:
    script = tmp_path / "node.py"
    script.write_text(
        "# %% setup\nBASE = 100\n# %% node\nreturn {'payload': BASE + msg['payload']}\n"
        "# %% sample\nmsg = {'payload': 5}\n"
    )
    status, body, _ = kernelexec("--code", str(script))
    assert status == 0 and body["outputs"] == [[{"payload": 105}]]
    status, body, _ = kernelexec("--code", str(script), "--msg", '{"payload": 1}')
    assert body["outputs"] == [[{"payload": 101}]]


def test_big_buffers_are_printed_inline_and_no_file_is_left() -> None:
    status, body, _ = kernelexec("-c", "return {'payload': bytes(200_000)}")
    assert status == 0
    assert body["outputs"][0][0]["payload"]["$kx"] == "buffer"
