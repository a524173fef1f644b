"""`roofsim gpus --template` and `roofsim hosts --template`: a commented spec file written from the pydantic models.

The decision these tests hold: the unfilled template does not load. Every field the spec cannot do without is a
FILL IN placeholder, and the loader refuses the file while one is left, naming all of them in one line (an
unfilled template must not price anything, and a user should not meet one missing field per try). Those
placeholders are the loader's only complaint: filled with real numbers the template is a valid spec, and so is
every optional field it shows commented out, once uncommented and filled.
"""

import re
import sys
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from roofsim.cli import main
from roofsim.specs import load_gpu, load_host
from roofsim.specs.hardware import GpuSpec, HostSpec
from roofsim.specs.sourced import Sourced
from roofsim.specs.template import FILL_IN, placeholders
from roofsim.specs.tomlfile import read_toml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

HW = Path(__file__).parent.parent / "hw_specs"
KINDS = {  # kind: model, a shipped spec to fill the template from, its loader
    "gpus": (GpuSpec, HW / "gpus/h100-sxm.toml", load_gpu),
    "hosts": (HostSpec, HW / "hosts/sapphire-rapids.toml", load_host),
}


def template(capsys, kind: str) -> str:
    assert main([kind, "--template"]) == 0
    return capsys.readouterr().out


def required_fields(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Dotted names of the fields the model cannot do without, sections opened."""
    out = set()
    for name, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel) and sub is not Sourced:
            out |= required_fields(sub, f"{prefix}{name}.")
        elif field.is_required():
            out.add(prefix + name)
    return out


def _section_of(annotation):
    """The section model of a field (an optional section, `SpreadSpec | None`, opened too), or None."""
    options = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    sub = options[0] if len(options) == 1 else None
    return sub if isinstance(sub, type) and issubclass(sub, BaseModel) and sub is not Sourced else None


def all_fields(model: type[BaseModel]) -> set[str]:
    out = set()
    for name, field in model.model_fields.items():
        sub = _section_of(field.annotation)
        if sub is not None:
            out |= {f"{name}.{n}" for n in all_fields(sub)}
        elif not field.exclude:
            out.add(name)
    return out


def fields(model: type[BaseModel]):
    """Every field a spec file can hold, sections opened."""
    for field in model.model_fields.values():
        sub = _section_of(field.annotation)
        if sub is not None:
            yield from fields(sub)
        elif not field.exclude:
            yield field


def fill(data, real):
    """The template's data with each FILL IN replaced by the shipped spec's value at the same place."""
    if isinstance(data, dict):
        if set(data) == {"value", "source"} and data["value"] == FILL_IN:
            value = real if not isinstance(real, dict) else real["value"]
            return {"value": value, "source": "test: the shipped spec's number"}
        return {k: fill(v, real.get(k) if isinstance(real, dict) else None) for k, v in data.items()}
    return real if data == FILL_IN else data


@pytest.mark.parametrize("kind", KINDS)
def test_template_names_every_field_with_its_description(capsys, kind):
    model, _, _ = KINDS[kind]
    text = template(capsys, kind)
    assert max(len(line) for line in text.splitlines()) <= 100
    data = tomllib.loads(text)
    shown = set(placeholders(data))
    # an optional section with fields of its own to fill is written commented out, header and all
    sections = {m.start(): m.group(1) for m in re.finditer(r"^(?:# )?\[(\w+)\]$", text, re.M)}
    optional = set()
    for m in re.finditer(r"^# (\w+) = ", text, re.M):  # commented out, under the section they belong to
        section = [name for at, name in sections.items() if at < m.start()]
        optional.add(f"{section[-1]}.{m.group(1)}" if section else m.group(1))
    assert shown == required_fields(model)
    assert shown | optional == all_fields(model)
    comments = " ".join(line.removeprefix("# ") for line in text.splitlines())
    for field in fields(model):
        assert field.description and " ".join(field.description.split()[:4]) in comments


@pytest.mark.parametrize("kind", KINDS)
def test_the_unfilled_template_is_refused_naming_every_placeholder_in_one_line(capsys, tmp_path, kind):
    model, _, _ = KINDS[kind]
    path = tmp_path / "mine.toml"
    path.write_text(template(capsys, kind))
    spec = ["--gpu", str(path)] if kind == "gpus" else ["--gpu", "rtx4090", "--host", str(path)]
    assert main(["predict", *spec, "--context", "128K"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"roofsim: error: spec file {str(path)!r}: ")
    n = len(required_fields(model))
    assert f"{n} fields still say 'FILL IN'" in err and "give each its value and where it comes from" in err


@pytest.mark.parametrize("kind", KINDS)
def test_filled_with_real_numbers_the_template_is_a_valid_spec(capsys, kind):
    """The placeholders are the loader's only complaint: the shipped spec's numbers in their places give a spec
    that loads, with those numbers."""
    model, shipped, load = KINDS[kind]
    data = tomllib.loads(template(capsys, kind))
    real = read_toml(shipped)
    filled = fill(data, real)
    assert not placeholders(filled)
    spec = model.model_validate(filled)
    reference = load(str(shipped))
    for name in required_fields(model):
        a, b = spec, reference
        for part in name.split("."):
            a, b = getattr(a, part), getattr(b, part)
        assert (a.value if isinstance(a, Sourced) else a) == (b.value if isinstance(b, Sourced) else b), name
    with pytest.raises(ValidationError) as e:  # unfilled: the placeholders are wrong, and nothing else is
        model.model_validate(data)
    required = required_fields(model)
    for err in e.value.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function"))
        assert loc in required or loc.removesuffix(".value") in required, loc


@pytest.mark.parametrize("kind", KINDS)
def test_the_optional_fields_shown_commented_out_load_once_filled(capsys, kind):
    model, shipped, _ = KINDS[kind]
    text = template(capsys, kind)
    # the commented-out optional fields get 1 (sources "x"); the required ones keep FILL IN for fill() below
    uncommented = re.sub(r"^# (\[\w+\])$", r"\1", text, flags=re.M)  # an optional section's header
    uncommented = re.sub(
        r"^# (\w+ = .*)$",
        lambda m: m.group(1).replace(f'value = "{FILL_IN}"', "value = 1").replace(f'"{FILL_IN}"', '"x"'),
        uncommented,
        flags=re.M,
    )
    data = tomllib.loads(uncommented)
    filled = fill(data, read_toml(shipped))
    spec = model.model_validate(filled)
    for name, field in model.model_fields.items():
        if not field.is_required() and not field.exclude:
            assert getattr(spec, name) is not None, name


def test_the_annotations_the_template_reads_are_the_ones_it_knows():
    """Every field is a string, a number with provenance, a table of them, or a section: a new kind of field
    would need the template taught first."""

    def kinds(model):
        for name, field in model.model_fields.items():
            t = field.annotation
            args = [a for a in typing.get_args(t) if a is not type(None)] or [t]
            for a in args:
                while typing.get_origin(a) is dict:
                    a = typing.get_args(a)[1]
                if typing.get_origin(a) is typing.Annotated:
                    a = typing.get_args(a)[0]
                if isinstance(a, type) and issubclass(a, BaseModel) and a is not Sourced:
                    yield from kinds(a)
                else:
                    yield name, a

    for model in (GpuSpec, HostSpec):
        odd = [(n, a) for n, a in kinds(model) if a is not Sourced and a is not str and n != "fingerprint"]
        assert not odd
