"""The run's progress lines: stages always, steps at most every every_s seconds and always the last."""

import io

from roofsim.executor.progress import Progress


def test_steps_are_thinned_but_the_last_is_said():
    out = io.StringIO()
    p = Progress(out, every_s=3600.0)
    p.stage("model built")
    for i in range(100):
        p.step("decode step", i, 100)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("roofsim run: model built (")
    assert [ln.split(" (")[0] for ln in lines[1:]] == ["roofsim run: decode step 100/100"]


def test_every_step_is_said_when_every_s_is_zero():
    out = io.StringIO()
    p = Progress(out, every_s=0.0)
    for i in range(3):
        p.step("prefill chunk", i, 3)
    assert [ln.split(" (")[0] for ln in out.getvalue().splitlines()] == [
        f"roofsim run: prefill chunk {i}/3" for i in (1, 2, 3)
    ]


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_the_step_line_rewritten_in_place():
    out = _Tty()
    p = Progress(out, every_s=0.0)
    for i in range(3):
        p.step("decode step", i, 3)
    p.stage("done")
    text = out.getvalue()
    assert (
        text.count("\r") == 3 and text.count("\n") == 2
    )  # one line rewritten in place, ended at the last step
    assert text.rstrip("\n").endswith(")") and "roofsim run: done" in text
