"""One `roofsim` command line in a process of its own, forked from a server that has imported torch, transformers and
the executor already: how `roofsim validate` runs each plan.

Each run gets its own process so that a crash or an out-of-memory costs that run only and the GPU's memory is whole
again for the next. A fresh `python -m roofsim.cli run` spends seconds importing torch and transformers (and the
model's transformers module) before it measures anything, at every run. The server (`python -m roofsim.runproc`,
started once) imports them (PRELOAD) and forks a child per run: the child is still a process of its own, with its
own CUDA context made after the fork, and it costs a fork instead of the imports.

Invariants:
- the server only imports: nothing in PRELOAD touches CUDA or runs a torch op at import (a CUDA context or a
  thread pool made before a fork is not usable in the child);
- the child runs with the caller's environment of the moment; where a variable that libraries read when they are
  imported (IMPORT_TIME_ENV's prefixes) differs from the server's, the caller gets a new server first;
- the child runs `roofsim.cli.main(argv)` in `cwd`, its stdin empty, its stdout and stderr (file descriptors 1 and
  2, native output too) going to files; its exit code is main's return;
- past its deadline the child gets SIGINT, as Ctrl-C would send (the executor writes what it measured so far and
  exits), and is killed INTERRUPT_GRACE_S later if it is still running.

The wire between caller and server is one JSON line each way per step: a request (argv, cwd, environment, the two
output files), then the child's pid, then its exit status. `ROOFSIM_RUN_PROCESS=exec`, or a platform without fork,
runs every command as a fresh `python -m roofsim.cli` instead, with the same invariants.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

INTERRUPT_GRACE_S = 30.0
"""How long a run past its deadline has, after SIGINT, to write its partial trace before it is killed."""

PRELOAD = [
    "torch",
    "transformers",
    "roofsim.cli",
    "roofsim.executor.cli",
    "roofsim.executor.runner",
    "roofsim.executor.models",
    # the model classes the executor builds (executor/models.py FAMILIES): importing one takes about a second
    *(
        f"transformers.models.{module}.modeling_{module}"
        for module in (
            "llama",
            "qwen2",
            "mistral",
            "phi3",
            "qwen3",
            "qwen3_moe",
            "mixtral",
            "gemma3",
            "gpt_oss",
        )
    ),
]
"""Imported once by the server; one that fails to import is skipped (without torch the child says what to install)."""


IMPORT_TIME_ENV = (
    "PYTHON",
    "LD_",
    "TORCH",
    "PYTORCH",
    "CUDA",
    "NVIDIA",
    "OMP_",
    "MKL",
    "TRANSFORMERS",
    "HF_",
)
"""Prefixes of the variables that the server's imports may read (the rest take effect in the child alone)."""

SERVER = [sys.executable, "-m", "roofsim.runproc"]
"""The server's command line."""


@dataclass
class Finished:
    returncode: int | None
    """main's exit code (negative: ended by that signal); None: past its deadline."""
    stderr: str
    stdout: str = ""


def forked() -> bool:
    """Whether runs are forked from the preloaded server (the default where the platform can fork)."""
    return hasattr(os, "fork") and os.environ.get("ROOFSIM_RUN_PROCESS", "fork") != "exec"


def run(argv: list[str], cwd: Path, timeout_s: float) -> Finished:
    """`roofsim <argv>` in its own process, in `cwd`, stopped past `timeout_s` (see the module's invariants)."""
    global _broken
    if not forked() or _broken:
        return _exec(argv, cwd, timeout_s)
    with _lock:
        try:
            return _server().run(argv, Path(cwd), timeout_s)
        except (ChildProcessError, BrokenPipeError) as e:  # the server failed: this run and the rest afresh
            _drop()
            _broken = str(e)
            print(f"roofsim: the run server failed ({e}); each run starts afresh", file=sys.stderr)
            return _exec(argv, cwd, timeout_s)


def command(argv: list[str]) -> list[str]:
    """The command line that runs `roofsim <argv>` afresh (what run.json records, to repeat a run by hand)."""
    return [sys.executable, "-m", "roofsim.cli", *argv]


# --- a fresh interpreter per run ----------------------------------------------------------------------------------


def _exec(argv: list[str], cwd: Path, timeout_s: float) -> Finished:
    # the run's folder as working directory: `python -m` puts it first on sys.path, where a source checkout's
    # folders would shadow the installed package (and roofsim.executor)
    proc = subprocess.Popen(command(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
    try:
        out, err = proc.communicate(timeout=timeout_s)
        return Finished(proc.returncode, err, out)
    except subprocess.TimeoutExpired:
        return Finished(None, interrupt(proc))


def interrupt(proc: subprocess.Popen) -> str:
    """Stop a process past its deadline as Ctrl-C would, kill it if it has not ended INTERRUPT_GRACE_S later, and
    return its stderr."""
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=INTERRUPT_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err or ""


# --- the caller's side of the server ------------------------------------------------------------------------------

_lock = threading.Lock()
_current: _Server | None = None
_broken: str | None = None  # why the server failed: every run starts a fresh interpreter from then on


class _Server:
    def __init__(self):
        self.env = _import_time_env()
        # its working directory, and so its sys.path[0]: an empty folder shadows nothing
        self.home = tempfile.mkdtemp(prefix="roofsim-runproc-")
        self.proc = subprocess.Popen(
            SERVER,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=self.home,
        )
        self._buf = b""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.alive():
            self.proc.stdin.close()  # the server ends at the end of its input
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.home, ignore_errors=True)

    def _line(self, timeout_s: float | None) -> dict | None:
        """The server's next line, or None if none came within timeout_s (None: wait for it)."""
        end = None if timeout_s is None else time.monotonic() + timeout_s
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = None if end is None else max(0.0, end - time.monotonic())
            if not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise ChildProcessError(f"the run server ended (exit code {self.proc.wait()})")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def run(self, argv: list[str], cwd: Path, timeout_s: float) -> Finished:
        with tempfile.TemporaryDirectory(prefix="roofsim-run-") as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            request = {
                "argv": argv,
                "cwd": str(cwd.resolve()),
                "env": dict(os.environ),
                "stdout": str(out),
                "stderr": str(err),
            }
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
            pid = self._line(None)["pid"]
            done = self._line(timeout_s)
            if done is None:  # past its deadline
                _signal(pid, signal.SIGINT)
                done = self._line(INTERRUPT_GRACE_S)
                if done is None:
                    _signal(pid, signal.SIGKILL)
                    self._line(None)
                code = None
            else:
                code = done["status"]
            text = [f.read_text(errors="replace") if f.is_file() else "" for f in (err, out)]
            return Finished(code, *text)


def _import_time_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(IMPORT_TIME_ENV)}


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:  # it ended just now: its exit status is on its way
        pass


def _server() -> _Server:
    """The running server, started anew where none runs or a variable read at import has changed since."""
    global _current
    if _current is not None and (not _current.alive() or _current.env != _import_time_env()):
        _drop()
    if _current is None:
        _current = _Server()
    return _current


@atexit.register
def _drop() -> None:
    global _current
    if _current is not None:
        _current.close()
        _current = None


# --- the server ---------------------------------------------------------------------------------------------------


def serve() -> None:
    """Import PRELOAD, then fork a child per request line on stdin, answering its pid and then its exit status."""
    import importlib
    import warnings

    # the threads alive at a fork are the idle pools torch starts at import, as where DataLoader forks its workers
    warnings.filterwarnings(
        "ignore", message=r".*fork\(\) may lead to deadlocks", category=DeprecationWarning
    )
    # a terminal's Ctrl-C is for the child, which writes its partial trace; the server ends with its input
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001, S112 - a module that cannot load here fails the child with its own message
            continue
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():  # a child could not make a CUDA context of its own
        sys.exit("roofsim.runproc: importing PRELOAD initialised CUDA; the server cannot fork runs")
    answer = sys.stdout.buffer
    for line in sys.stdin.buffer:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            os._exit(_child(req))
        answer.write(json.dumps({"pid": pid}).encode() + b"\n")
        answer.flush()
        _, status = os.waitpid(pid, 0)
        answer.write(json.dumps({"status": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
        answer.flush()


def _child(req: dict) -> int:
    """The forked run: the request's folder, fds 0-2 redirected, Ctrl-C a KeyboardInterrupt, then `roofsim <argv>`;
    returns the exit code (the caller ends the process with it, skipping the server's exit handlers)."""
    code = 1
    try:
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
            f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(f, fd)
            os.close(f)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - the process's own streams
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.argv = ["roofsim", *req["argv"]]
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from roofsim.cli import main

        code = main(req["argv"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - what a fresh interpreter would print, and its exit code 1
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001, S110 - a closed stream has nothing left to say
                pass
    return code


if __name__ == "__main__":
    serve()
