"""`roofsim generate`: a checkpoint written here (tiny Llama, random weights, a word tokenizer) gives exactly the text
of transformers' greedy `generate` with its default cache, under every exact family, on the CPU executor."""

import io
import json
import shutil
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from roofsim.executor.check import stock_greedy_text, tiny_config, word_tokenizer, write_checkpoint  # noqa: E402
from roofsim.executor.generate import TextStream  # noqa: E402

from roofsim.cli import main  # noqa: E402
from roofsim.errors import UserError  # noqa: E402
from roofsim.families.registry import exact_families  # noqa: E402

NEW = 12
CHAT = "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}{% if add_generation_prompt %}assistant :{% endif %}"
PROMPT = " ".join(f"w{(7 * i) % 100}" for i in range(40))


def write_tiny_checkpoint(path: Path) -> Path:
    return write_checkpoint(path, tiny_config("llama"), seed=12, chat_template=CHAT)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = write_tiny_checkpoint(tmp_path_factory.mktemp("gen") / "tiny-llama")
    tok = word_tokenizer(128)
    ids = tok(PROMPT)["input_ids"]
    ref = stock_greedy_text(path, ids, NEW)
    assert len(ref.split()) >= NEW // 2  # the random model goes on for a while (no early end)
    return path, ref


def _generate(capsys, *args) -> tuple[str, str]:
    assert main(["generate", *map(str, args), "--device", "cpu"]) == 0
    cap = capsys.readouterr()
    return cap.out, cap.err


@pytest.mark.parametrize("family", exact_families())
def test_generate_matches_transformers_greedy_under_each_exact_family(ckpt, family, tmp_path, capsys):
    path, ref = ckpt
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"plan": {"family": family, "prefill_chunk": 16}}))  # 3 prefill chunks
    prompt = tmp_path / "prompt.txt"
    prompt.write_text(PROMPT)
    report = tmp_path / "run.json"
    out, err = _generate(
        capsys, path, "--prompt-file", prompt, "--max-new-tokens", NEW, "--plan", plan, "--json-out", report
    )
    assert out == ref + "\n"
    assert "measured" in err and "predicted" in err and f"plan {family}" in err
    doc = json.loads(report.read_text())
    assert doc["plan"]["family"] == family and doc["new_tokens"] == NEW and doc["finish_reason"] == "length"
    assert len(doc["measured"]["prefill_step_s"]) == 3 and len(doc["measured"]["decode_step_s"]) == NEW - 1
    assert doc["predicted"]["prefill_s"] > 0 and doc["predicted"]["decode_tokens_per_s"] > 0
    if family in ("resident", "evict"):  # they replay their decode where they can, and say why not here
        assert doc["measured"]["notes"] == ["decode ran eager: CUDA graphs need a CUDA device"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("family", ["resident", "evict"])
def test_generate_replays_its_decode_on_the_gpu(ckpt, family, tmp_path, capsys):
    path, _ = ckpt
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"plan": {"family": family, "prefill_chunk": 16}}))
    prompt = tmp_path / "prompt.txt"
    prompt.write_text(PROMPT)
    report = tmp_path / "run.json"
    assert (
        main(["generate", str(path), "--prompt-file", str(prompt), "--max-new-tokens", str(NEW), "--plan", str(plan),
              "--json-out", str(report), "--device", "cuda", "--ignore-eos"])
        == 0
    )  # fmt: skip
    doc = json.loads(report.read_text())
    assert doc["new_tokens"] == NEW and len(doc["measured"]["decode_step_s"]) == NEW - 1
    assert any("replayed from a CUDA graph" in n for n in doc["measured"]["notes"]), doc["measured"]["notes"]


def test_a_family_name_takes_its_best_knobs_and_the_prompt_comes_on_stdin(ckpt, capsys, monkeypatch):
    path, ref = ckpt
    monkeypatch.setattr(sys, "stdin", io.StringIO(PROMPT))
    out, err = _generate(capsys, path, "--max-new-tokens", NEW, "--plan", "head_offload")
    assert out == ref + "\n"
    assert "head_offload's best knobs here" in err


def test_auto_plans_for_the_prompt_and_chat_applies_the_template(ckpt, tmp_path, capsys):
    path, _ = ckpt
    prompt = tmp_path / "q.txt"
    prompt.write_text("w3 w4 w5")
    tok = word_tokenizer(128, CHAT)
    ids = tok(
        tok.apply_chat_template(
            [{"role": "user", "content": "w3 w4 w5"}], add_generation_prompt=True, tokenize=False
        ),
        add_special_tokens=False,
    )["input_ids"]
    assert ids[:2] == [3, 6]  # "user :"
    out, err = _generate(capsys, path, "--prompt-file", prompt, "--max-new-tokens", 5, "--chat")
    assert out == stock_greedy_text(path, ids, 5) + "\n"
    assert "the planner's best for e2e time" in err


def test_sampling_is_seeded_and_needs_do_sample(ckpt, tmp_path, capsys):
    path, _ = ckpt
    prompt = tmp_path / "p.txt"
    prompt.write_text(PROMPT)
    args = [path, "--prompt-file", prompt, "--max-new-tokens", 8, "--do-sample", "--top-k", 20, "--seed", 5]
    first, _ = _generate(capsys, *args, "--temperature", 1.5)
    again, _ = _generate(capsys, *args, "--temperature", 1.5)
    assert first == again and len(first.split()) >= 1
    assert (
        main(
            [
                "generate",
                str(path),
                "--prompt-file",
                str(prompt),
                "--max-new-tokens",
                "4",
                "--temperature",
                "0.5",
            ]
        )
        == 2
    )
    assert "--temperature applies to sampling: add --do-sample" in capsys.readouterr().err
    assert main(["generate", *map(str, args), "--temperature", "0"]) == 2
    assert "temperature must be above 0, got 0.0" in capsys.readouterr().err


def test_user_errors_are_one_line(tmp_path, capsys):
    assert main(["generate", str(tmp_path / "nowhere"), "--max-new-tokens", "4", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a checkpoint directory" in err


def test_without_torch_the_commands_say_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    assert main(["generate", str(tmp_path), "--max-new-tokens", "4"]) == 2
    assert "pip install 'roofsim[executor]'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    assert main(["serve", str(tmp_path)]) == 2
    assert "pip install 'roofsim[serve]'" in capsys.readouterr().err


def test_a_plan_that_does_not_fit_is_refused_with_its_need(tmp_path):
    from roofsim.executor.machine import Machine, choose_plan

    from roofsim.limits import Limits
    from roofsim.specs import load_gpu, load_host, load_model
    from roofsim.workload import Workload

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"family": "head_offload", "prefill_chunk": 8192}))
    m = Machine(
        torch.device("cpu"),
        "h100-sxm",
        load_gpu("h100-sxm"),
        load_host("epyc-rome-milan"),
        Limits(host_mem_bytes=2**30),
        "test",
    )
    with pytest.raises(
        UserError, match=r"does not fit: it needs .* of host memory where this machine has 1.00 GiB"
    ):
        choose_plan(str(plan), load_model("llama-3-8b"), m, Workload(context=131072, gen=8))


class BytesTokenizer:
    """Each id is some bytes; a character may span ids (as byte-level BPE's do)."""

    def __init__(self, pieces):
        self.pieces = pieces

    def decode(self, ids, skip_special_tokens=True):
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")


def test_text_stream_holds_back_split_characters_and_stops_before_a_stop_string():
    e_acute = "é".encode()
    tok = BytesTokenizer([b"ab", e_acute[:1], e_acute[1:], b" c", b"STO", b"P!", b" d"])
    s = TextStream(tok)
    assert [s.push(i) for i in (0, 1, 2, 3)] == ["ab", "", "é", " c"]
    assert s.finish() == "" and s.text == "abé c"

    s = TextStream(tok, stop=["STOP"])
    deltas = [s.push(i) for i in (0, 3, 4, 5, 6)]
    assert s.stopped and "".join(deltas) + s.finish() == "ab c" == s.text
    assert deltas == ["", "a", "b c", "", ""]  # held back: the last 3 characters (could begin "STOP")

    s = TextStream(tok, stop=["STOP"])
    deltas = [s.push(i) for i in (0, 4, 6)]
    assert not s.stopped and "".join(deltas) + s.finish() == "abSTO d"


def test_profile_lookup(tmp_path, monkeypatch):
    from roofsim.executor.machine import this_machine

    from roofsim.specs.profile import PROFILE_ENV, find_profile

    src = Path(__file__).parents[1] / "validation/results/h100/calibrated"
    folder = tmp_path / "roofsim"
    folder.mkdir()
    for f in ("h100-sxm-calibrated.toml", "h100-sxm-calibrated-host.toml"):
        shutil.copy(src / f, folder / f)
    monkeypatch.delenv(PROFILE_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert find_profile("NVIDIA H100 80GB HBM3") == folder / "h100-sxm-calibrated.toml"
    assert find_profile("NVIDIA A100-SXM4-80GB") is None and find_profile(None) is None
    monkeypatch.setenv(PROFILE_ENV, str(folder / "h100-sxm-calibrated.toml"))
    assert find_profile(None) == folder / "h100-sxm-calibrated.toml"  # a file named is used as is
    m = this_machine(torch.device("cpu"))
    assert m.gpu.name == "h100-sxm-calibrated" and "calibrated profile" in m.gpu_from
    assert m.host.name == "h100-sxm-calibrated-host"
    monkeypatch.setenv(PROFILE_ENV, str(tmp_path / "missing.toml"))
    with pytest.raises(UserError, match="ROOFSIM_PROFILE"):
        find_profile(None)
