"""Reading spec data files (TOML) and turning validation failures into one-line user errors."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from roofsim.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

M = TypeVar("M", bound=BaseModel)


def read_toml(path: Path, what: str = "spec file") -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"{what} {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{what} {str(path)!r} is a directory: give the TOML file in it") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {str(path)!r}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise UserError(
            f"{what} {str(path)!r} is not UTF-8 text (byte {e.start}): save it as UTF-8 TOML"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{what} {str(path)!r} is not valid TOML: {e}") from None


def first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        msg = "is missing"
    return f"field '{loc}' {msg}" if loc else msg


def load_model_file(cls: type[M], path: Path, example: str) -> M:
    data = read_toml(path)
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise UserError(f"spec file {str(path)!r}: {first_error(e)} (see {example} for the format)") from None
