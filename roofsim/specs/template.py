"""A commented spec file to start one's own GPU or host spec from (`roofsim gpus --template`), written from the
pydantic models: every field the loader reads, its description, and a placeholder where a value is needed.

A field the spec cannot do without gets the placeholder FILL_IN (a number with FILL_IN as its source too), and the
loader refuses a file while any is left (refuse_placeholders), naming them all in one line: an unfilled template
must not price anything. Optional fields are written commented out, with what leaving them out means.
"""

from __future__ import annotations

import re
import textwrap
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from roofsim.errors import UserError
from roofsim.specs.sourced import Sourced
from roofsim.specs.tomlfile import read_toml

FILL_IN = "FILL IN"
WIDTH = 100

_HEADER = {
    "gpus": (
        "GPU",
        "gpus",
        "h100-sxm.toml",
        "bf16_tflops = 165.2",
        "roofsim predict --gpu my-gpu.toml --context 128K",
    ),
    "hosts": (
        "host",
        "hosts",
        "sapphire-rapids.toml",
        "cpu_cores = 64",
        "roofsim predict --gpu rtx4090 --host my-host.toml --context 128K",
    ),
}


def _strip(annotation: Any) -> tuple[Any, bool]:
    """The annotation without Optional and Annotated, and whether None was allowed."""
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        annotation = args[0] if len(args) == 1 else annotation
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation, optional


def _placeholder(annotation: Any) -> str:
    """A TOML value of the field's shape with FILL_IN where a value goes."""
    annotation, _ = _strip(annotation)
    if annotation is Sourced:
        return f'{{ value = "{FILL_IN}", source = "{FILL_IN}" }}'
    if typing.get_origin(annotation) is dict:
        key_type, value_type = typing.get_args(annotation)
        key = "1" if key_type is int else "key"
        return f"{{ {key} = {_placeholder(value_type)} }}"
    return f'"{FILL_IN}"'


def _comment(text: str) -> list[str]:
    return textwrap.wrap(
        text,
        WIDTH,
        initial_indent="# ",
        subsequent_indent="# ",
        break_on_hyphens=False,
        break_long_words=False,
    )


def _section(annotation: Any) -> type[BaseModel] | None:
    """The model of a field that is a TOML table of its own ([compute]), or None."""
    annotation, _ = _strip(annotation)
    is_model = isinstance(annotation, type) and issubclass(annotation, BaseModel)
    return annotation if is_model and annotation is not Sourced else None


def _fields(model: type[BaseModel]) -> list[str]:
    lines = []
    for name, field in model.model_fields.items():
        if field.exclude or _section(field.annotation):  # set by the loader / written as its own table
            continue
        line = f"{name} = {_placeholder(field.annotation)}"
        if field.is_required():
            lines += ["", *_comment(field.description or name), line]
        else:  # the models say what None means; in a file, None is a field left out
            text = re.sub(
                r"(\. )?None: ", lambda m: ". Left out: " if m.group(1) else "left out: ", field.description
            )
            lines += ["", *_comment(f"optional: {text}"), f"# {line}"]
    return lines


def spec_template(kind: str) -> str:
    """The commented TOML template of a GPU spec (kind "gpus") or a host spec ("hosts")."""
    from roofsim.specs.hardware import GpuSpec, HostSpec

    model = GpuSpec if kind == "gpus" else HostSpec
    what, folder, example, bare, use = _HEADER[kind]
    lines = [
        f"# roofsim {what} spec: every field roofsim reads, each with what it means.",
        f'# Replace each "{FILL_IN}": roofsim refuses the file while one is left. Then:',
        f"#   {use}",
        '# A number: { value = 64, source = "a URL or document" }, or instead of source:',
        "#   derived (a formula), measured (a run) or assumed (a guess).",
        f"#   A bare number ({bare}) is read as user-provided.",
        "# Optional fields are commented out (# name = ...): uncomment one to set it.",
        "# Units are in the names: _gib GiB (2^30 bytes), _mib MiB, _gbps GB/s (10^9 bytes/s),",
        "#   _tflops 10^12 FLOP/s, _us microseconds.",
        f"# Real values to compare with: the built-in specs, e.g. hw_specs/{folder}/{example}.",
        *_fields(model),
    ]
    for name, field in model.model_fields.items():
        section = _section(field.annotation)
        if section is not None:
            body = [f"[{name}]"]
            if section.__doc__:
                body += _comment(" ".join(section.__doc__.split()))
            body += _fields(section)
            if not field.is_required() and any(f.is_required() for f in section.model_fields.values()):
                # an optional table with fields of its own to fill: written commented out, as optional fields are
                text = re.sub(r"None: ", "left out: ", field.description or name)
                body = [
                    *_comment(f"optional: {text}"),
                    *(ln if ln.startswith("#") or not ln else f"# {ln}" for ln in body),
                ]
            lines += ["", *body]
    return "\n".join(lines) + "\n"


def placeholders(data: Any, path: str = "") -> list[str]:
    """The dotted names of the fields whose value (or a number's source) still says FILL_IN."""
    if isinstance(data, dict):
        found = [p for k, v in data.items() for p in placeholders(v, f"{path}.{k}" if path else str(k))]
        return list(dict.fromkeys(found))
    if isinstance(data, str) and data.strip().startswith(FILL_IN):
        field, _, last = path.rpartition(".")
        return [field if field and last in Sourced.model_fields else path]  # a number's value or source
    return []


def refuse_placeholders(path: Path) -> None:
    """A one-line user error naming every field of a spec file still at the template's FILL_IN."""
    left = placeholders(read_toml(path))
    if left:
        named = ", ".join(left[:6]) + (f" and {len(left) - 6} more" if len(left) > 6 else "")
        raise UserError(
            f"spec file {str(path)!r}: {len(left)} field{'s' if len(left) > 1 else ''} still say {FILL_IN!r}: "
            f"{named}; give each its value and where it comes from"
        )
