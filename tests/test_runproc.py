"""roofsim.runproc: each run in a process of its own (forked from a preloaded server, or exec'd), with the
caller's folder and environment and main's exit code; a run past its deadline is interrupted as Ctrl-C would, so it
can write its partial trace."""

import json
import subprocess
import sys

import pytest

from roofsim import runproc


def _child(code: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_interrupt_lets_the_run_write_what_it_measured(tmp_path):
    out = tmp_path / "partial.json"
    proc = _child(
        "import sys, time\n"
        "try:\n"
        "    print('ready', file=sys.stderr, flush=True)\n"
        "    time.sleep(60)\n"
        "except KeyboardInterrupt:\n"
        f"    open({str(out)!r}, 'w').write('partial')\n"
        "    print('interrupted; the partial trace is written', file=sys.stderr)\n"
        "    raise SystemExit(130)\n"
    )
    assert proc.stderr.readline().strip() == "ready"  # the handler is in place before the signal
    err = runproc.interrupt(proc)
    assert out.read_text() == "partial"
    assert "partial trace is written" in err
    assert proc.returncode == 130


def test_a_run_that_ignores_the_interrupt_is_killed(monkeypatch):
    monkeypatch.setattr(runproc, "INTERRUPT_GRACE_S", 0.5)
    proc = _child(
        "import signal, sys, time\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "print('ready', file=sys.stderr, flush=True)\n"
        "time.sleep(60)\n"
    )
    assert proc.stderr.readline().strip() == "ready"
    runproc.interrupt(proc)
    assert proc.returncode is not None and proc.returncode < 0  # ended by a signal, not by itself


# --- the forked runs: a process per run, forked from a server that imported torch once ---------------------------

TINY = {
    "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
    "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 128, "max_position_embeddings": 1024,
    "head_dim": 16, "tie_word_embeddings": False,
}  # fmt: skip


@pytest.fixture
def tiny_run(tmp_path):
    """A plan file and a tiny model's config.json in tmp_path, named relative to it."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    (tmp_path / "plan.json").write_text(json.dumps({"family": "resident"}))
    return tmp_path


@pytest.mark.parametrize("how", ["fork", "exec"])
def test_a_command_works_in_the_folder_it_is_given_and_exits_with_mains_code(tiny_run, monkeypatch, how):
    """A relative path resolves in `cwd`; a user error is main's exit code 2 with its one line on stderr."""
    if how == "exec":
        monkeypatch.setenv("ROOFSIM_RUN_PROCESS", "exec")
    else:  # the default: the environment stays as it was, so the server already running serves the later tests
        monkeypatch.delenv("ROOFSIM_RUN_PROCESS", raising=False)
    assert runproc.forked() == (how == "fork")
    done = runproc.run(
        ["predict", "--gpu", "rtx4090", "--plan", "plan.json", "--context", "4K"], tiny_run, 120
    )
    assert done.returncode == 0, done.stderr
    assert "resident" in done.stdout
    bad = runproc.run(["predict", "--gpu", "rtx4090", "--plan", "nowhere.json"], tiny_run, timeout_s=120)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("roofsim: error:")
    assert bad.stderr.strip().count("\n") == 0


def _run(prompt: int, gen: int) -> list[str]:
    """`roofsim run` of tiny_run's plan and model, its trace to m.json, all named relative to the run's folder."""
    model = ["--model", "config.json"]
    return ["run", "plan.json", *model, "--prompt-len", str(prompt), "--gen", str(gen), "-o", "m.json"]


def test_a_forked_run_past_its_deadline_is_interrupted_and_writes_what_it_measured(tiny_run, monkeypatch):
    """SIGINT at the deadline: the executor's KeyboardInterrupt writes the partial trace; the run has no exit code.
    (The deadline counts from the fork: a server still importing does not spend it.)"""
    monkeypatch.delenv("ROOFSIM_RUN_PROCESS", raising=False)
    done = runproc.run([*_run(32, 200000), "--device", "cpu"], tiny_run, timeout_s=4)
    assert done.returncode is None
    assert "interrupted" in done.stderr
    partial = json.loads((tiny_run / "m.json").read_text())
    assert not partial["complete"] and partial["summary"]["decode"]["step_s"]


@pytest.mark.gpu
def test_a_forked_run_makes_its_own_cuda_context(tiny_run):
    """The server imports torch without touching CUDA, so a run forked from it can use the GPU (twice: each run's
    context is its own)."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    (tiny_run / "plan.json").write_text(json.dumps({"family": "head_offload"}))
    for _ in range(2):
        done = runproc.run(_run(64, 3), tiny_run, timeout_s=300)
        assert done.returncode == 0, done.stderr
        assert json.loads((tiny_run / "m.json").read_text())["header"]["gpu"] != "cpu"


def test_a_forked_run_has_the_callers_environment_of_the_moment(tmp_path, monkeypatch):
    """A variable set after the server started reaches the child (rich sizes the table by COLUMNS) without a new
    server; one that libraries read at import tells the server apart (the next run gets a new one)."""
    monkeypatch.delenv("ROOFSIM_RUN_PROCESS", raising=False)
    widths = {}
    for columns in ("60", "200"):
        monkeypatch.setenv("COLUMNS", columns)
        done = runproc.run(["gpus"], tmp_path, timeout_s=120)
        assert done.returncode == 0, done.stderr
        widths[columns] = max(len(line) for line in done.stdout.splitlines())
        server = runproc._current
    assert widths["60"] < widths["200"]
    assert runproc.run(["gpus"], tmp_path, timeout_s=120).returncode == 0 and runproc._current is server
    monkeypatch.setenv("TORCH_SHOW_CPP_STACKTRACES", "1")  # read when torch is imported: the server's own
    assert runproc._import_time_env() != server.env and "COLUMNS" not in server.env


# last in the file: it stops the server the tests before it share
def test_a_server_that_fails_leaves_the_runs_to_fresh_interpreters(tiny_run, monkeypatch, capsys):
    """A server that ends before it answers: the run, and every later one, starts a fresh interpreter instead."""
    monkeypatch.delenv("ROOFSIM_RUN_PROCESS", raising=False)
    monkeypatch.setattr(runproc, "SERVER", [sys.executable, "-c", "raise SystemExit(3)"])
    monkeypatch.setattr(runproc, "_broken", None)
    runproc._drop()
    try:
        done = runproc.run(["run", "nowhere.json"], tiny_run, timeout_s=120)
        assert done.returncode == 2 and "roofsim: error:" in done.stderr  # the fresh interpreter's answer
        assert "run server failed" in capsys.readouterr().err
        assert runproc._broken and runproc._current is None
    finally:
        runproc._drop()
