"""A user's mistake, in every command and every file a command reads, is one line on stderr that starts
`roofsim: error:`, exit code 2, and no traceback (issue 30). Hypothesis generates bad command lines and bad GPU,
host, model config, plan, trace, campaign and measurements files; the plain tests after them pin each fix.

Every generated input is bad by construction and stopped by a check before any long work: contexts are short, and
the commands that would start long work (run's model, validate's campaign, calibrate's benchmarks) have it
replaced by a call that fails the test."""

from __future__ import annotations

import contextlib
import io
import json
import math
import string
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roofsim.argchecks import MAX_BATCH, MAX_DECODE_STEPS, MAX_TOP
from roofsim.cli import build_parser, main
from roofsim.plan import family_names
from roofsim.specs import list_gpus, list_hosts, list_models
from roofsim.specs.tomlfile import tomllib
from roofsim.units import MAX_TOKENS, fmt_bytes_both, parse_bytes

ROOT = Path(__file__).resolve().parents[1]
GPU_TOML = tomllib.loads((ROOT / "hw_specs/gpus/rtx4090.toml").read_text())
HOST_TOML = tomllib.loads((ROOT / "hw_specs/hosts/epyc-rome-milan.toml").read_text())
MEASUREMENTS = ROOT / "validation/results/h100/calibrated/h100-sxm-calibrated-measurements.json"
TINY = {
    "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
    "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 128, "max_position_embeddings": 1024,
    "head_dim": 16, "tie_word_embeddings": False,
}  # fmt: skip
BASE = ["--gpu=rtx4090", "--model=tiny-llama", "--context=4K"]  # tiny-llama at 4K tokens: milliseconds

FUZZ = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """main(argv) in this process; an exception that escapes it fails the test with its traceback."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def assert_user_error(argv: list[str], *needles: str) -> str:
    code, out, err = run_cli(argv)
    assert code == 2, f"{argv}: exit {code}, stderr {err!r}, stdout {out[-500:]!r}"
    assert err.startswith("roofsim: error: ") and err.endswith("\n") and err.count("\n") == 1, (argv, err)
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (argv, err)
    return err


@contextlib.contextmanager
def folder() -> Iterator[Path]:
    """A fresh folder per example (hypothesis runs many examples in one test call)."""
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


@contextlib.contextmanager
def no_long_work() -> Iterator[None]:
    """The work behind run, validate and calibrate fails the test if a bad input ever reaches it."""

    def reached(*a, **kw):
        raise AssertionError("a bad input reached the long work")

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch("roofsim.validate.validate_one", reached))
        for target in ("roofsim.executor.models.load_model", "roofsim.executor.calibrate.measure"):
            try:
                stack.enter_context(mock.patch(target, reached))
            except (ImportError, AttributeError):
                pass  # no executor here: run and calibrate stop at their install message
        yield


# --- values that are bad for one option -------------------------------------------------------------------------


def _unknown(known: list[str]) -> st.SearchStrategy[str]:
    """Text that names none of `known` (as the loaders compare names) and is no file here."""
    chars = st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))
    text = st.text(chars, max_size=12) | st.text(string.ascii_lowercase + string.digits + "-_.", max_size=12)
    lowered = {k.lower() for k in known}
    return text.filter(lambda s: s.strip().lower() not in lowered and not Path(s.strip() or "/").exists())


BAD_TOKENS = (
    st.sampled_from(
        ["", "x", "12Q", "1e6", "-5", "1,000", "1M5", "nan", "inf", "0x10", "0", "0K", "0.4", "K"]
    )
    | st.integers(1, 999).map(lambda n: f"{n}.5")  # half a token
    | st.integers(MAX_TOKENS + 1, 10**30).map(str)
    | st.sampled_from(["65M", "1G", "64G", "999G"])
)
BAD_BYTES = st.sampled_from(
    ["", "lots", "24G", "1T", "0", "0GB", "-1GB", "nan", "inf", "1e30", "24XB", "2048TB", "1PB", "GB", "1KB"]
) | st.integers(1, 2**20 - 1).map(str)  # bytes without a unit: under 1 MiB
BAD_GPU_MEM = BAD_BYTES | st.sampled_from(
    ["26GB", "1TB", "1GB", "1GiB", "512MiB"]
)  # over rtx4090's, or its reserve
BAD_BATCH = (
    st.integers(max_value=0).map(str) | st.integers(MAX_BATCH + 1).map(str) | st.sampled_from(["x", "1.5"])
)


def _choice(choices: list[str]) -> st.SearchStrategy[str]:
    return st.text(string.ascii_letters + "-_", min_size=1, max_size=10).filter(lambda s: s not in choices)


COMMON = {
    "--gpu": _unknown(list_gpus()),
    "--host": _unknown(list_hosts()),
    "--model": _unknown(list_models()),
    "--context": BAD_TOKENS,
    "--gen": BAD_TOKENS,
    "--batch": BAD_BATCH,
    "--gpu-mem": BAD_GPU_MEM,
    "--host-mem": BAD_BYTES,
}
OPTIONS = {
    "predict": {**COMMON, "--plan": _unknown(family_names())},
    "simulate": {
        **COMMON,
        "--plan": _unknown(family_names()),
        "--decode-steps": BAD_TOKENS | st.integers(MAX_DECODE_STEPS + 1, MAX_TOKENS).map(str),
        "--keep": _choice(["all", "sample", "none"]),
    },
    "plan": {
        **COMMON,
        "--objective": _choice(["decode", "prefill", "e2e", "throughput", "max-context"]),
        "--fetch-fraction": st.floats().filter(lambda x: not 0 < x <= 1).map(repr) | st.just("x"),
        "--evict-budget": BAD_TOKENS,
        "--restrict": _choice(["headinfer"]),
        "--families": st.lists(_unknown(family_names()), min_size=1, max_size=3).map(",".join),
        "--top": st.integers(max_value=-1).map(str) | st.integers(MAX_TOP + 1).map(str),
    },
    "roofline": {
        **{k: v for k, v in COMMON.items() if k not in ("--gpu-mem", "--host-mem")},
        "--chunk": BAD_TOKENS,
    },
}
EXTRA = {"simulate": ["--plan=resident", "--gen=2"], "plan": ["--top=1"]}

# Flags that contradict each other or the command, each a bad command line as it stands.
CONTRADICTIONS = [
    ["predict", "--gpu=rtx4090", "--plan=resident"],
    ["predict", "--gpu=rtx4090", "--roofline"],
    ["predict", "--gpu=rtx4090", "--simulate"],
    ["predict", "--gpu=rtx4090", "--report=x.html"],
    ["predict", *BASE, "--roofline", "--json"],
    ["plan", *BASE, "--prompt=8K"],
    ["plan", *BASE, "--families=sparse_fetch"],
    ["plan", *BASE, "--families=resident", "--restrict=headinfer"],
    ["plan", *BASE, "--restrict=headinfer", "--allow-approximate"],
    ["plan", *BASE, "--fetch-fraction=0.5"],
    ["plan", *BASE, "--evict-budget=2K"],
    ["plan", *BASE, "--allow-approximate", "--families=resident", "--fetch-fraction=0.5"],
    ["roofline", *BASE, "--gpu-mem=20GB"],
    ["roofline", *BASE, "--host=genoa"],
    ["validate", "--gpu=rtx4090", "--repredict=.", "-o", "out"],
    ["validate", "--gpu=rtx4090", "--repredict=.", "--only=a"],
    ["validate", "--gpu=rtx4090"],
    ["report", ".", "--gpu=rtx4090"],
    ["gpus", "--bogus"],
    ["hosts", "extra"],
    ["models", "--json"],
    [],
    ["frobnicate"],
]


@st.composite
def bad_command_lines(draw) -> list[str]:
    command = draw(st.sampled_from(sorted(OPTIONS)))
    options = OPTIONS[command]
    flag = draw(st.sampled_from(sorted(options)))
    value = draw(options[flag])
    argv = [command, *BASE, *EXTRA.get(command, [])]
    argv = [a for a in argv if not a.startswith(f"{flag}=")]
    return [*argv, f"{flag}={value}"]


@FUZZ
@given(bad_command_lines())
def test_a_bad_option_value_is_one_line_exit_2(argv):
    assert_user_error(argv)


@settings(FUZZ, max_examples=len(CONTRADICTIONS))
@given(st.sampled_from(CONTRADICTIONS))
def test_contradictory_or_misplaced_flags_are_one_line_exit_2(argv):
    assert_user_error(argv)


@FUZZ
@given(
    st.sampled_from(
        ["--prompt-len", "--gen", "--batch", "--warmup", "--trace-steps", "--gpu", "--model", "--dtype"]
    ),
    st.data(),
)
def test_run_checks_its_options_before_building_a_model(flag, data):
    bad = {
        "--prompt-len": BAD_TOKENS,
        "--gen": BAD_TOKENS,
        "--batch": BAD_BATCH,
        "--warmup": st.integers(max_value=-1).map(str),
        "--trace-steps": st.integers(max_value=-2).map(str),
        "--gpu": _unknown(list_gpus()),
        "--model": _unknown(list_models()),
        "--dtype": _choice(["bf16", "fp16", "fp32"]),
    }[flag]
    with folder() as d, no_long_work():
        argv = ["run", "resident", "--device=cpu", "--model=tiny-llama", "-o", str(d / "m.json")]
        assert_user_error([a for a in argv if not a.startswith(f"{flag}=")] + [f"{flag}={data.draw(bad)}"])


# --- bad files ---------------------------------------------------------------------------------------------------


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else "inf" if v == math.inf else "-inf" if v == -math.inf else repr(v)
    if isinstance(v, (int, str)):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"


def dump_toml(data: dict, sections: tuple[str, ...] = ()) -> str:
    """TOML of a spec or campaign: `sections` as [tables], lists of tables as [[arrays]], the rest inline."""
    lines = [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in data.items() if k not in sections]
    for name in sections:
        if isinstance(data.get(name), dict):
            lines += [f"[{name}]", *(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in data[name].items())]
        elif isinstance(data.get(name), list) and all(isinstance(t, dict) for t in data[name]):
            for table in data[name]:
                lines += [f"[[{name}]]", *(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in table.items())]
        elif name in data:
            lines.insert(0, f"{json.dumps(name)} = {_toml_value(data[name])}")
    return "\n".join(lines) + "\n"


GPU_SECTIONS = ("compute", "memory", "link", "efficiency", "runtime")
POSITIVE = {  # spec numbers that must be above 0 (the others may be 0, none may be negative)
    "compute.bf16_tflops", "compute.fp16_tflops", "compute.fp32_tflops", "compute.sms", "memory.capacity_gib",
    "memory.bandwidth_gbps", "link.h2d_gbps", "link.d2h_gbps", "link.pageable_h2d_gbps", "link.duplex_efficiency",
    "link.copy_engines", "efficiency.gemm", "efficiency.attention", "efficiency.memory", "ram_capacity_gib",
    "ram_bandwidth_gbps", "ram_efficiency", "cpu_cores", "cpu_tflops", "cpu_attention_gbps",
}  # fmt: skip
NOT_A_NUMBER = st.sampled_from([math.nan, math.inf, -math.inf, "fast", True, [1.0], {"source": "x"}])


def _numbers(spec: dict) -> list[str]:
    out = []
    for key, value in spec.items():
        if isinstance(value, dict) and "value" in value:
            out.append(key)
        elif isinstance(value, dict):
            out += [f"{key}.{k}" for k, v in value.items() if isinstance(v, dict) and "value" in v]
    return out


def _at(spec: dict, path: str) -> tuple[dict, str]:
    *sections, key = path.split(".")
    for s in sections:
        spec = spec[s]
    return spec, key


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", "--gpu=--", "--model", "llama-3-8b", "--context", "32K"],
        ["predict", "--gpu", "h100-sxm", "--model=--", "--context", "32K"],
        ["run", "resident", "--device=cpu", "--model=--", "-o", "m.json"],
    ],
)
def test_a_bare_double_dash_as_an_options_value_is_one_line_exit_2(argv):
    """argparse reads `--opt=--` as an empty list; the command line is refused before any command sees it."""
    code, _, err = run_cli(argv)
    assert code == 2 and err.count("\n") == 1 and "'--' is not a value for" in err


@st.composite
def bad_specs(draw, base: dict, sections: tuple[str, ...]) -> str:
    """A GPU or host spec with one mistake: a field removed, a number that is no finite non-negative number (or 0
    where it must be positive), a capacity under the reserve, an efficiency far above its peak, a fractional count,
    an unknown field, or a name that is no string."""
    spec = json.loads(json.dumps(base))
    numbers = _numbers(spec)
    kind = draw(st.sampled_from(["remove", "value", "unknown", "name", "room", "fraction", "count"]))
    if kind == "remove":
        fields = [*(k for k in spec if k not in sections), *numbers, *(s for s in sections if s in spec)]
        table, key = _at(spec, draw(st.sampled_from(fields)))
        del table[key]
    elif kind == "value":
        path = draw(st.sampled_from(numbers))
        bad = draw(
            NOT_A_NUMBER
            | st.floats(max_value=-1e-9, allow_nan=False)
            | (st.just(0) if path in POSITIVE else NOT_A_NUMBER)
        )
        table, key = _at(spec, path)
        table[key] = (
            {**table[key], "value": bad} if draw(st.booleans()) and not isinstance(bad, dict) else bad
        )
    elif kind == "unknown":
        where = draw(st.sampled_from([None, *(s for s in sections if s in spec)]))
        (spec if where is None else spec[where])["bogus_field"] = 1
    elif kind == "name":
        spec["name"] = draw(st.integers() | st.just([]) | st.just({}))
    elif kind == "room" and "memory" in spec:  # GPU memory no larger than what the spec reserves, or absurd
        reserved = spec["memory"]["reserved_gib"]["value"]
        spec["memory"]["capacity_gib"]["value"] = draw(
            st.floats(min_value=1e-6, max_value=reserved) | st.floats(min_value=16385, max_value=1e300)
        )
    elif kind in ("room", "fraction"):  # a fraction of a peak far above 1
        path = draw(
            st.sampled_from([p for p in numbers if p.split(".")[-1] in ("gemm", "memory", "ram_efficiency")])
        )
        table, key = _at(spec, path)
        table[key]["value"] = draw(st.floats(min_value=1.26, max_value=1e300))
    else:  # a count of cores, SMs or copy engines that is no whole number
        path = draw(
            st.sampled_from([p for p in numbers if p.split(".")[-1] in ("sms", "copy_engines", "cpu_cores")])
        )
        table, key = _at(spec, path)
        table[key]["value"] = draw(st.integers(0, 200)) + 0.5
    return dump_toml(spec, sections)


NOT_UTF8 = st.binary(min_size=1, max_size=40).filter(lambda b: not _utf8(b))


def _utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def bad_file(text: st.SearchStrategy[str], broken_syntax: list[str]) -> st.SearchStrategy[bytes]:
    """A file's bytes: mutated content, text the format cannot parse, or bytes that are not UTF-8."""
    return text.map(str.encode) | st.sampled_from(broken_syntax).map(str.encode) | NOT_UTF8


NOT_JSON = ["", "{", "[1,", '{"a": }', "nul", "{'a': 1}", "[" * 5000]
NOT_AN_OBJECT = st.sampled_from([[], [1, 2], "x", 3, 2.5, None, True]).map(json.dumps)
NOT_TOML = ["name = ", "[compute", "= 3", 'a = "x\n', "[[config]\n"]


@FUZZ
@given(bad_file(bad_specs(GPU_TOML, GPU_SECTIONS), NOT_TOML))
def test_a_bad_gpu_spec_file_is_one_line_exit_2(content):
    with folder() as d:
        (d / "gpu.toml").write_bytes(content)
        assert_user_error(["predict", f"--gpu={d / 'gpu.toml'}", "--model=tiny-llama", "--context=4K"])


@FUZZ
@given(bad_file(bad_specs(HOST_TOML, ()), NOT_TOML))
def test_a_bad_host_spec_file_is_one_line_exit_2(content):
    with folder() as d:
        (d / "host.toml").write_bytes(content)
        assert_user_error(["predict", *BASE, f"--host={d / 'host.toml'}", "--plan=resident"])


INT_KEYS = [
    "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers",
    "vocab_size", "max_position_embeddings", "head_dim",
]  # fmt: skip
REQUIRED_KEYS = [
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_hidden_layers",
    "vocab_size",
]
NOT_A_COUNT = st.sampled_from([0, -1, -64, 2.5, "64", True, [4], {"n": 4}, 10**12, math.nan])


@st.composite
def bad_model_configs(draw) -> str:
    """A Hugging Face config.json with one mistake: a key missing, a count that is no positive whole number (or
    past roofsim's bounds), KV heads that do not divide the heads, an unknown model_type, a flag that is no bool."""
    cfg = dict(TINY)
    kind = draw(st.sampled_from(["remove", "count", "null", "kv", "type", "flag"]))
    if kind == "remove":
        del cfg[draw(st.sampled_from(REQUIRED_KEYS))]
    elif kind == "count":
        cfg[draw(st.sampled_from(INT_KEYS))] = draw(NOT_A_COUNT)
    elif kind == "null":
        cfg[draw(st.sampled_from(REQUIRED_KEYS))] = None
    elif kind == "kv":
        cfg["num_key_value_heads"] = draw(st.sampled_from([3, 5, 8, 1000]))
    elif kind == "type":
        cfg["model_type"] = draw(st.sampled_from(["gpt2", "Llama", "", 3, None, ["llama"]]))
    else:
        cfg[draw(st.sampled_from(["tie_word_embeddings", "attention_bias"]))] = draw(
            st.sampled_from(["yes", 1, None, [True]])
        )
    return json.dumps(cfg)


@FUZZ
@given(bad_file(bad_model_configs() | NOT_AN_OBJECT, NOT_JSON))
def test_a_bad_model_config_is_one_line_exit_2(content):
    with folder() as d:
        (d / "config.json").write_bytes(content)
        assert_user_error(
            ["predict", "--gpu=rtx4090", f"--model={d / 'config.json'}", "--context=4K", "--plan=resident"]
        )


BAD_KNOBS = {  # family -> knob -> values that are wrong for tiny-llama (2 layers, 2 KV heads) or for any model
    "resident": {"prefill_chunk": [0, -1, 2.5, "4K", MAX_TOKENS + 1, True], "weights": ["cloud", 3]},
    "layer_offload": {"write_back": ["x"], "syncs_per_layer": [-1, 17], "write_back_tokens": [0]},
    "head_offload": {
        "kv_heads_per_slot": [0, -1, 3, "x"], "resident_slots": [-1, 100, [1], "x"], "prefetch_depth": [-1],
        "slot_buffers": [0], "write_back": ["x"], "token_block": [0, MAX_TOKENS + 1], "syncs_per_slot": [-1, 17],
        "slot_alloc": ["x"], "write_back_tokens": [0],
    },
    "kvpr": {"recompute_tokens": [-1, "most", MAX_TOKENS + 1, 2.5], "overlap": ["x"]},
    "cpu_attention": {"cpu_kv_heads": [-1, 9], "kv_heads_per_slot": [0], "resident_slots": [-1, 100]},
    "sparse_fetch": {
        "fetch_fraction": [0, 2, -1, math.nan, "x"], "partial_key_ratio": [0, 2], "dense_layers": [-1],
    },
    "evict": {"budget_tokens": [0, MAX_TOKENS + 1], "local_tokens": [-1], "prefill_chunk": [0]},
}  # fmt: skip


@st.composite
def bad_plans(draw, with_model_spec: bool = False) -> str:
    """A plan file with one mistake: a knob of the wrong type or out of range, an unknown knob, an unknown or
    missing family; bare or inside a plan document, whose model_spec may be the mistake instead."""
    family = draw(st.sampled_from(sorted(BAD_KNOBS)))
    plan: dict = {"family": family}
    kind = draw(st.sampled_from(["knob", "unknown knob", "family", "no family", "model_spec"]))
    if kind == "knob":
        knob = draw(st.sampled_from(sorted(BAD_KNOBS[family])))
        plan[knob] = draw(st.sampled_from(BAD_KNOBS[family][knob]))
    elif kind == "unknown knob":
        plan[draw(st.sampled_from(["bogus", "prefill-chunk", "Family"]))] = 1
    elif kind == "family":
        plan["family"] = draw(_unknown(family_names()) | st.sampled_from([3, None, ["resident"], {}]))
    elif kind == "no family":
        del plan["family"]
    if kind == "model_spec" and with_model_spec:
        spec = {"name": "m", "source": "x", "family": "llama", "n_layers": 2, "hidden": 64, "n_heads": 4,
                "n_kv_heads": 2, "head_dim": 16, "intermediate": 128, "vocab": 128, "max_positions": 4096}  # fmt: skip
        spec[draw(st.sampled_from(["n_layers", "n_heads", "hidden", "vocab"]))] = draw(NOT_A_COUNT)
        return json.dumps({"plan": plan, "model": "m", "model_spec": spec})
    if kind == "model_spec":
        plan["family"] = "no_such_family"
    return json.dumps({"plan": plan} if draw(st.booleans()) else plan)


@FUZZ
@given(
    bad_file(bad_plans(with_model_spec=True) | NOT_AN_OBJECT, NOT_JSON),
    st.sampled_from(["predict", "simulate"]),
)
def test_a_bad_plan_file_is_one_line_exit_2(content, command):
    with folder() as d:
        (d / "plan.json").write_bytes(content)
        argv = [command, "--gpu=rtx4090", "--context=4K", f"--plan={d / 'plan.json'}", "--gen=2"]
        assert_user_error(argv)


@settings(FUZZ, max_examples=15)
@given(bad_file(bad_plans(with_model_spec=True) | NOT_AN_OBJECT, NOT_JSON))
def test_run_refuses_a_bad_plan_file_before_building_a_model(content):
    with folder() as d, no_long_work():
        (d / "plan.json").write_bytes(content)
        assert_user_error(["run", str(d / "plan.json"), "--device=cpu", "-o", str(d / "m.json")])


@pytest.fixture(scope="module")
def trace_doc(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("trace") / "trace.json"
    code, _, err = run_cli(["simulate", *BASE, "--plan=resident", "--gen=2", "--keep=none", f"--json={path}"])
    assert code == 0, err
    return json.loads(path.read_text())


@st.composite
def bad_traces(draw, doc: dict) -> str:
    """A trace file with one mistake: no header, a header of the wrong type, a plan or workload that is not one,
    spans that are not spans, an unknown field."""
    doc = json.loads(json.dumps(doc))
    kind = draw(st.sampled_from(["no header", "header", "plan", "workload", "spans", "unknown", "version"]))
    if kind == "no header":
        del doc["header"]
    elif kind == "header":
        doc["header"] = draw(st.sampled_from([3, "x", [], None]))
    elif kind == "plan":
        doc["header"]["plan"] = draw(
            st.sampled_from([{"family": "nope"}, {"family": "resident", "bogus": 1}, 3])
        )
    elif kind == "workload":
        doc["header"]["workload"]["context"] = draw(st.sampled_from([-1, 0, "x", None, 2.5]))
    elif kind == "spans":
        doc["spans"] = draw(st.sampled_from(["x", [{"bogus": 1}], [3], {}]))
    elif kind == "unknown":
        doc["bogus"] = 1
    else:
        doc["header"]["schema_version"] = draw(st.sampled_from(["x", None, [1]]))
    return json.dumps(doc)


@FUZZ
@given(st.data())
def test_a_bad_trace_file_is_one_line_exit_2(trace_doc, data):
    content = data.draw(bad_file(bad_traces(trace_doc) | NOT_AN_OBJECT, NOT_JSON))
    name = data.draw(st.sampled_from(["trace.json", "measured.json", "trace.json.gz"]))
    with folder() as d:
        (d / name).write_bytes(content)
        assert_user_error(["report", str(d / name), "-o", str(d / "r.html")])


CAMPAIGN = {"name": "a", "model": "tiny-llama", "context": "4K", "plan": "resident", "gen": 2}
BAD_CONFIG = {
    "name": st.sampled_from(["a b", "", "../x", "a/b", 3, True]),
    "model": _unknown(list_models()) | st.sampled_from([3, ["tiny-llama"]]),
    "context": BAD_TOKENS | st.sampled_from([True, 2.5, -4096, 0, [4096]]),
    "plan": _unknown([*family_names(), "planner"])
    | st.sampled_from([{"family": "nope"}, {"family": "resident", "x": 1}, 3]),
    "batch": st.sampled_from([0, -1, MAX_BATCH + 1, "x", 2.5]),
    "gen": st.sampled_from([0, -1, MAX_TOKENS + 1, "x"]),
    "gpu_mem": BAD_GPU_MEM | st.sampled_from([24, True]),
    "runners_up": st.sampled_from([-1, MAX_TOP + 1, "x"]),
    "bogus": st.just(1),
}


@st.composite
def bad_campaigns(draw) -> str:
    """A campaign TOML with one mistake: a field of one configuration, two configurations of one name, or a
    `config` that is no list of tables. The mistake may be in the second configuration."""
    kind = draw(st.sampled_from(["field", "field", "duplicate", "shape"]))
    good = dict(CAMPAIGN)
    if kind == "shape":
        return dump_toml({"config": draw(st.sampled_from([3, "x", [1, 2], {"name": "a"}]))})
    if kind == "duplicate":
        return dump_toml({"config": [good, dict(good)]}, ("config",))
    key = draw(st.sampled_from(sorted(BAD_CONFIG)))
    bad = {**good, "name": "b", key: draw(BAD_CONFIG[key])}
    return dump_toml({"config": [good, bad] if draw(st.booleans()) else [bad]}, ("config",))


@FUZZ
@given(bad_file(bad_campaigns(), NOT_TOML))
def test_a_bad_campaign_file_is_one_line_exit_2_before_any_run(content):
    with folder() as d, no_long_work():
        (d / "c.toml").write_bytes(content)
        assert_user_error(
            ["validate", str(d / "c.toml"), "--gpu=rtx4090", "-o", str(d / "out"), "--device=cpu"]
        )


@pytest.mark.skipif(not MEASUREMENTS.is_file(), reason="no committed measurements file")
@settings(FUZZ, max_examples=20)
@given(st.data())
def test_a_bad_measurements_file_is_one_line_exit_2(data):
    doc = json.loads(MEASUREMENTS.read_text())
    key = data.draw(st.sampled_from(sorted(doc)))
    if data.draw(st.booleans()):
        del doc[key]
    else:
        doc[key] = data.draw(
            st.sampled_from(["x", -1.5, [[1]], {"bogus": 1}]).filter(lambda v: v != doc[key])
        )
    content = data.draw(bad_file(st.just(json.dumps(doc)) | NOT_AN_OBJECT, NOT_JSON))
    with folder() as d, no_long_work():
        (d / "m.json").write_bytes(content)
        code, _, err = run_cli(
            ["calibrate", "--gpu=h100-sxm", f"--refit={d / 'm.json'}", "-o", str(d / "cal")]
        )
        if code == 0:  # a field the fit does not read may take any JSON value; the profile is then written
            assert key in ("fingerprint",) or not isinstance(doc.get(key), str), err
            return
        assert code == 2 and err.count("\n") == 1 and err.startswith("roofsim: error: "), err


# --- each fix, plainly --------------------------------------------------------------------------------------------


def test_run_without_torch_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails as it does where it is missing
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"family": "resident"}))
    err = assert_user_error(["run", str(plan), "--model=tiny-llama", "-o", str(tmp_path / "m.json")])
    assert "pip install 'roofsim[executor]'" in err and "torch" in err


def test_run_knows_its_options_without_torch():
    assert "run" in build_parser().format_help()  # the command is there to say what to install


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["plan", *BASE, "-o", "{missing}/plan.json"], "-o"),
        (["plan", *BASE, "-o", "{dir}"], "-o"),
        (["plan", *BASE, "--report={missing}/r.html"], "--report"),
        (["predict", *BASE, "--report={dir}"], "--report"),
        (["simulate", *BASE, "--plan=resident", "--json={missing}/t.json"], "--json"),
        (["simulate", *BASE, "--plan=resident", "--json={dir}"], "--json"),
        (["run", "resident", "--model=tiny-llama", "--device=cpu", "-o", "{missing}/m.json"], "-o"),
        (["run", "resident", "--model=tiny-llama", "--device=cpu", "-o", "{dir}"], "-o"),
        (["calibrate", "--gpu=h100-sxm", "-o", "{file}"], "-o"),
        (["validate", "{campaign}", "--gpu=rtx4090", "-o", "{file}"], "-o"),
        (
            ["validate", "{campaign}", "--gpu=rtx4090", "-o", "{dir}/v", "--archive={missing}/a.tar.gz"],
            "--archive",
        ),
        (["report", "{trace}", "-o", "{missing}/r.html"], "-o"),
    ],
)
def test_an_output_path_is_checked_before_the_work(argv, flag, tmp_path, monkeypatch):
    import roofsim.planner
    import roofsim.sim

    def reached(*a, **kw):
        raise AssertionError("the work ran before the output path was checked")

    monkeypatch.setattr(roofsim.planner, "search", reached)
    monkeypatch.setattr(roofsim.sim, "simulate", reached)
    (tmp_path / "file").write_text("x")
    (tmp_path / "c.toml").write_text(dump_toml({"config": [CAMPAIGN]}, ("config",)))
    (tmp_path / "t.json").write_text("{}")
    paths = {"missing": tmp_path / "no" / "such", "dir": tmp_path, "file": tmp_path / "file"}
    paths |= {"campaign": tmp_path / "c.toml", "trace": tmp_path / "t.json"}
    with no_long_work():
        err = assert_user_error([a.format(**paths) for a in argv])
    assert err.startswith(f"roofsim: error: {flag} ") and ("does not exist" in err or "folder" in err), err


@pytest.mark.parametrize(
    "make,argv,needle",
    [
        ("gpu", ["predict", "--gpu={f}", "--context=4K"], "not UTF-8"),
        ("host", ["predict", "--gpu=rtx4090", "--host={f}", "--context=4K"], "not UTF-8"),
        ("json", ["predict", "--gpu=rtx4090", "--model={f}", "--context=4K"], "not UTF-8"),
        ("json", ["predict", "--gpu=rtx4090", "--context=4K", "--plan={f}"], "not UTF-8"),
        ("json", ["run", "{f}", "-o", "{d}/m.json"], "not UTF-8"),
        ("json", ["report", "{f}"], "not a roofsim trace"),
        ("json", ["calibrate", "--gpu=h100-sxm", "--refit={f}", "-o", "{d}/cal"], "not UTF-8"),
        ("toml", ["validate", "{f}", "--gpu=rtx4090", "-o", "{d}/v"], "not UTF-8"),
    ],
)
def test_a_file_that_is_not_utf8_is_one_line(make, argv, needle, tmp_path):
    f = tmp_path / {"gpu": "gpu.toml", "host": "host.toml", "json": "x.json", "toml": "c.toml"}[make]
    f.write_bytes(b"\xff\xfe\x00bad")
    assert_user_error([a.format(f=f, d=tmp_path) for a in argv], needle)


@pytest.mark.parametrize("value", ["[1, 2]", '"x"', "3", "null"])
def test_json_whose_top_level_is_not_an_object(value, tmp_path):
    f = tmp_path / "x.json"
    f.write_text(value)
    assert_user_error(["predict", "--gpu=rtx4090", f"--model={f}", "--context=4K"], "not an object")
    assert_user_error(["predict", "--gpu=rtx4090", "--context=4K", f"--plan={f}"], "not an object")
    assert_user_error(["report", str(f)], "not a roofsim trace")


@pytest.mark.parametrize(
    "key,value,needle",
    [
        ("num_attention_heads", 0, "num_attention_heads must be from 1 to 1024, got 0"),
        ("num_attention_heads", -4, "num_attention_heads must be from 1"),
        ("num_attention_heads", "4", "num_attention_heads must be a whole number, got '4'"),
        ("hidden_size", 0, "hidden_size must be from 1"),
        ("hidden_size", "64", "hidden_size must be a whole number"),
        ("num_hidden_layers", 2.5, "num_hidden_layers must be a whole number"),
        ("vocab_size", 10**30, "vocab_size must be from 1 to"),
        ("num_key_value_heads", 3, "not a multiple of num_key_value_heads 3"),
        ("tie_word_embeddings", "yes", "tie_word_embeddings must be true or false"),
    ],
)
def test_bad_counts_in_a_model_config_name_the_key(key, value, needle, tmp_path):
    f = tmp_path / "config.json"
    f.write_text(json.dumps({**TINY, key: value}))
    assert_user_error(["predict", "--gpu=rtx4090", f"--model={f}", "--context=4K"], needle)


def test_zero_heads_in_an_opt_config_is_one_line(tmp_path):
    f = tmp_path / "config.json"
    opt = {"model_type": "opt", "hidden_size": 64, "num_attention_heads": 0, "num_hidden_layers": 2,
           "ffn_dim": 128, "vocab_size": 100}  # fmt: skip
    f.write_text(json.dumps(opt))
    assert_user_error(["predict", "--gpu=rtx4090", f"--model={f}", "--context=4K"], "num_attention_heads")


@pytest.mark.parametrize("value", ["0", "-0.5", "2", "nan", "inf"])
def test_fetch_fraction_out_of_range(value):
    assert_user_error(["plan", *BASE, "--allow-approximate", f"--fetch-fraction={value}"], "in (0, 1]")


@pytest.mark.parametrize("value", ["64G", "65M", "99999999999999999999"])
def test_an_absurd_context_is_refused_with_the_bound(value):
    for command in ("predict", "plan", "simulate", "roofline"):
        extra = ["--plan=resident"] if command == "simulate" else []
        assert_user_error([command, "--gpu=rtx4090", f"--context={value}", *extra], "at most 64M tokens")


def test_a_fractional_token_count_is_refused_and_a_suffix_may_carry_a_fraction():
    assert_user_error(["predict", "--gpu=rtx4090", "--context=1.5"], "whole number of tokens")
    code, out, err = run_cli(["roofline", "--gpu=rtx4090", "--model=tiny-llama", "--context=1.5K"])
    assert code == 0, err


@pytest.mark.parametrize("value", ["-1", "101"])
def test_top_out_of_range(value):
    assert_user_error(["plan", *BASE, f"--top={value}"], "--top")


def test_unknown_families_and_empty_names_in_families():
    assert_user_error(["plan", *BASE, "--families=resident,headoffload"], "did you mean head_offload")
    assert_user_error(["plan", *BASE, "--families="], "empty name")


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("bandwidth_gbps", "nan", "field 'memory.bandwidth_gbps' must be a finite number"),
        ("capacity_gib", "inf", "field 'memory.capacity_gib' must be a finite number"),
        ("h2d_gbps", '{ value = nan, source = "x" }', "field 'link.h2d_gbps' must be a finite number"),
        ("capacity_gib", "0.5", "capacity_gib 0.5 leaves nothing above reserved_gib 1"),
        ("gemm", "5.0", "field 'efficiency.gemm' gemm is a fraction of the datasheet peak"),
        ("copy_engines", "1.5", "copy_engines is a count"),
    ],
)
def test_a_gpu_spec_that_was_accepted_silently_is_refused_naming_the_field(field, value, needle, tmp_path):
    text = (ROOT / "hw_specs/gpus/rtx4090.toml").read_text()
    lines = [f"{field} = {value}" if line.startswith(f"{field} = ") else line for line in text.splitlines()]
    (tmp_path / "gpu.toml").write_text("\n".join(lines))
    assert_user_error(["predict", f"--gpu={tmp_path / 'gpu.toml'}", "--context=4K"], needle)


@pytest.mark.parametrize(
    "field,value", [("ram_capacity_gib", "nan"), ("ram_bandwidth_gbps", "inf"), ("cpu_cores", "0.5")]
)
def test_a_host_spec_that_was_accepted_silently_is_refused_naming_the_field(field, value, tmp_path):
    text = (ROOT / "hw_specs/hosts/epyc-rome-milan.toml").read_text()
    lines = [f"{field} = {value}" if line.startswith(f"{field} = ") else line for line in text.splitlines()]
    (tmp_path / "host.toml").write_text("\n".join(lines))
    assert_user_error(
        ["predict", "--gpu=rtx4090", f"--host={tmp_path / 'host.toml'}", "--context=4K"], f"'{field}'"
    )


def test_gpu_mem_that_caps_nothing_or_leaves_nothing_is_refused():
    assert_user_error(["predict", *BASE, "--gpu-mem=48GB"], "more than rtx4090's 24.00 GiB")
    assert_user_error(["predict", *BASE, "--gpu-mem=1GB"], "1.00 GB (953.67 MiB)", "reserves")


def test_sizes_take_decimal_and_binary_units_as_they_say():
    assert parse_bytes("1TB") == 1e12 and parse_bytes("1TiB") == 2**40
    assert parse_bytes("24GB") == 24e9 and parse_bytes("24 GiB") == 24 * 2**30
    assert fmt_bytes_both(1e12) == "1.00 TB (931.32 GiB)"
    assert_user_error(["predict", *BASE, "--host-mem=1T"], "say 1TB (10^12 bytes) or 1TiB (2^40 bytes)")
    assert_user_error(["predict", *BASE, "--host-mem=512"], "512 bytes", "with its unit")


def test_a_decimal_host_cap_prints_both_bases_where_a_plan_does_not_fit():
    code, out, err = run_cli(
        ["predict", "--gpu=rtx4090", "--context=8M", "--host-mem=1TB", "--plan=head_offload"]
    )
    assert code == 2 and "1.00 TB (931.32 GiB) available" in err, err


def test_a_bad_configuration_late_in_a_campaign_is_said_before_the_first_runs(tmp_path):
    bad = {**CAMPAIGN, "name": "b", "model": "no-such-model"}
    (tmp_path / "c.toml").write_text(dump_toml({"config": [CAMPAIGN, bad]}, ("config",)))
    with no_long_work():
        err = assert_user_error(
            ["validate", str(tmp_path / "c.toml"), "--gpu=rtx4090", "-o", str(tmp_path / "v")]
        )
    assert "configuration b" in err and "unknown model 'no-such-model'" in err
    assert not (tmp_path / "v").exists()


def test_only_names_a_configuration_that_is_there(tmp_path):
    (tmp_path / "c.toml").write_text(dump_toml({"config": [CAMPAIGN]}, ("config",)))
    argv = ["validate", str(tmp_path / "c.toml"), "--gpu=rtx4090", "-o", str(tmp_path / "v"), "--only=a,zz"]
    assert_user_error(argv, "--only 'zz' is not a configuration")


def test_report_of_a_folder_without_traces(tmp_path):
    assert_user_error(["report", str(tmp_path)], "holds no predicted or measured trace")


def test_simulate_bounds_the_steps_it_runs_event_by_event(tmp_path):
    assert_user_error(["simulate", *BASE, "--plan=resident", "--gen=5000"], "--decode-steps 4096")
    (tmp_path / "p.json").write_text(json.dumps({"family": "resident", "prefill_chunk": 1}))
    assert_user_error(
        ["simulate", "--gpu=rtx4090", "--context=64M", f"--plan={tmp_path / 'p.json'}"], "prefill_chunk"
    )


def test_a_user_error_is_one_line_whatever_it_quotes(tmp_path):
    bad = tmp_path / "two\nlines.toml"
    assert_user_error(["predict", f"--gpu={bad}", "--context=4K"], "does not exist")


def test_an_empty_output_path_is_a_mistake_not_no_output(tmp_path):
    assert_user_error(["plan", *BASE, "-o", ""], "-o is empty")
    assert_user_error(["simulate", *BASE, "--plan=resident", "--json", ""], "--json is empty")


def test_serve_refuses_a_port_before_reading_the_checkpoint(tmp_path):
    assert_user_error(["serve", str(tmp_path / "no-checkpoint"), "--port", "70000"], "--port 70000")


def test_generate_checks_its_json_output_before_generating(tmp_path):
    pytest.importorskip("torch")
    argv = ["generate", str(tmp_path), "--prompt", "hi", "--max-new-tokens", "2", "--json-out", str(tmp_path)]
    assert_user_error(argv, "--json-out")
