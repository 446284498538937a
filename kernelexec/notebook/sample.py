"""The sample message of a sample cell: read it (:func:`parse_sample`), write it
(:func:`sample_source`)."""

from __future__ import annotations

import ast
import json
import pprint
from typing import Any

__all__ = ["parse_sample", "sample_source"]

_SAMPLE_FORM = "a sample cell must be msg = {...} with literal values, or a JSON object"


def parse_sample(source: str) -> dict[str, Any]:
    """The message of a sample cell: ``msg = {...}`` with literal values, or a JSON object."""
    text = source.strip()
    try:
        value: Any = json.loads(text)
    except ValueError:
        value = _literal_sample(text)
    if not isinstance(value, dict):
        msg = f"a sample message must be a dict, not {type(value).__name__}"
        raise ValueError(msg)
    return value


def _literal_sample(text: str) -> Any:
    try:
        return _literal_value(text)
    except ValueError as exc:
        if str(exc).startswith("malformed node"):
            msg = f"{_SAMPLE_FORM} (no calls or variables)"
            raise ValueError(msg) from None
        raise


def _literal_value(text: str) -> Any:
    tree = ast.parse(text)
    if len(tree.body) != 1:
        msg = "a sample cell holds one statement: msg = {...}"
        raise ValueError(msg)
    stmt = tree.body[0]
    if (
        isinstance(stmt, ast.Assign)
        and len(stmt.targets) == 1
        and isinstance(stmt.targets[0], ast.Name)
    ):
        return ast.literal_eval(stmt.value)
    if isinstance(stmt, ast.Expr):
        return ast.literal_eval(stmt.value)
    raise ValueError(_SAMPLE_FORM)


def sample_source(sample: dict[str, Any], var: str = "msg") -> str:
    """Python source of a sample cell for ``sample`` (read back by :func:`parse_sample`)."""
    return f"{var} = {pprint.pformat(sample, indent=1, width=88, sort_dicts=False)}"
