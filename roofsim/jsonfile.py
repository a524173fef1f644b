"""Reading a user's JSON file (a plan, a model's config.json, a measurements file), its mistakes as one-line user
errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from roofsim.errors import UserError


def read_json(path: str | Path, what: str) -> Any:
    """The JSON value in `path`; `what` names the file in errors, e.g. "plan file"."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{what} {name!r} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{what} {name!r} is a directory: give the JSON file in it") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {name!r}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {name!r} is not UTF-8 text (byte {e.start}): give a JSON file") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{what} {name!r} is not valid JSON: {e}") from None
    except RecursionError:
        raise UserError(f"{what} {name!r} nests too deeply to be a {what}") from None


def read_json_object(path: str | Path, what: str) -> dict[str, Any]:
    """As read_json, where the file must hold one JSON object ({...})."""
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise UserError(
            f"{what} {str(path)!r} holds a JSON {_kind(data)}, not an object: give a {what} ({{...}} at the top)"
        )
    return data


def _kind(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")
