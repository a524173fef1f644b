"""Text in, text out under a plan: a checkpoint's model and its own tokenizer, the plan chosen for this machine,
the prompt prefilled in the plan's chunks, then a decode loop that hands out text as it is produced.

Timing is the runner's: an event on the compute stream before and after each forward (CUDA events, or wall
time on the CPU stand-in), the device synchronised after each. The prefill's time runs from the first chunk's
start to the last chunk's end; decode tokens/s is over the steps after the first (whose kernels run for the
first time), as `(steps - 1) / their seconds`.

    tm = TextModel.load("ckpt/", device="cuda")
    out = tm.generate(tm.encode("Once upon a time"), plan, max_new_tokens=64, on_text=print)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from roofsim.errors import UserError


@dataclass
class Sampling:
    """transformers' names and meanings; None leaves a processor out. Greedy unless do_sample."""

    do_sample: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None

    def __post_init__(self):
        for name, ok, rule in (
            ("temperature", lambda v: v > 0, "above 0"),
            ("top_p", lambda v: 0 < v <= 1, "in (0, 1]"),
            ("top_k", lambda v: v >= 0, "0 (off) or more"),
            ("repetition_penalty", lambda v: v > 0, "above 0"),
        ):
            value = getattr(self, name)
            if value is not None and not ok(value):
                raise UserError(f"{name} must be {rule}, got {value}")

    def processors(self):
        """The logits processors, in transformers' order: the repetition penalty, then (sampling only)
        temperature, top-k, top-p."""
        from transformers import (
            LogitsProcessorList,
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        out = LogitsProcessorList()
        if self.repetition_penalty is not None and self.repetition_penalty != 1.0:
            out.append(RepetitionPenaltyLogitsProcessor(self.repetition_penalty))
        if self.do_sample:
            if self.temperature is not None and self.temperature != 1.0:
                out.append(TemperatureLogitsWarper(self.temperature))
            if self.top_k:
                out.append(TopKLogitsWarper(self.top_k))
            if self.top_p is not None and self.top_p < 1.0:
                out.append(TopPLogitsWarper(self.top_p))
        return out


class TextStream:
    """Token ids in, text deltas out; the deltas joined are the text. Decodes a sliding window (vLLM's prefix and
    read offsets), so each step costs a few tokens' decode whatever the length, and holds back a delta that ends
    in an incomplete character. With stop strings, text that could begin one is held back until it cannot, and
    the text ends before the first stop string found."""

    def __init__(self, tokenizer, stop: Sequence[str] = ()):
        self.tok = tokenizer
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.prefix = self.read = 0
        self.text = ""  # decoded so far (before any stop string)
        self.sent = 0  # characters of `text` handed out
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def push(self, token: int) -> str:
        """The text `token` adds that is safe to hand out now."""
        if self.stopped:
            return ""
        self.ids.append(token)
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before) :]
            self.prefix, self.read = self.read, len(self.ids)
        return self._release(final=False)

    def finish(self) -> str:
        """What is still held back, once no token follows."""
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if self.stop and not self.stopped:
            hits = [i for i in (self.text.find(s, max(0, self.sent - len(s))) for s in self.stop) if i >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                self.stopped = final = True
        end = len(self.text)
        if not final and self.stop:
            end -= max(len(s) for s in self.stop) - 1
        if end <= self.sent:
            return ""
        out, self.sent = self.text[self.sent : end], end
        return out


@dataclass
class Generation:
    """One call's tokens, text and measured times."""

    token_ids: list[int]
    text: str
    finish_reason: str  # "stop": an end-of-sequence token or a stop string; "length": max_new_tokens
    prompt_tokens: int
    prefill_s: float
    prefill_step_s: list[float] = field(default_factory=list)
    decode_step_s: list[float] = field(default_factory=list)
    cache_setup_s: float = 0.0
    peak_gpu_bytes: float | None = None
    # how decode ran: replayed from a CUDA graph, or why eager
    notes: list[str] = field(default_factory=list)

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Steps after the first over their seconds (the first runs its kernels for the first time)."""
        steps = self.decode_step_s[1:]
        return len(steps) / sum(steps) if steps and sum(steps) > 0 else None


class TextModel:
    """A checkpoint's model and tokenizer, loaded from local files only."""

    def __init__(self, model, tokenizer, name: str, gpu_spec: str | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.gpu_spec = gpu_spec  # the spec name or file kvpr's automatic split is priced with
        self.device = next(model.parameters()).device
        self._warm = False

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        device="cpu",
        dtype=torch.bfloat16,
        tokenizer=None,
        layers_device=None,
        gpu_spec: str | None = None,
    ):
        from roofsim.executor.models import load_model

        path = Path(path)
        if not any(path.glob("*.safetensors")):
            raise UserError(f"{path}: no *.safetensors weights there (a checkpoint directory holds them)")
        tokenizer = tokenizer or load_tokenizer(path)
        model, name = load_model(str(path), device=device, dtype=dtype, layers_device=layers_device)
        return cls(model, tokenizer, name, gpu_spec)

    # ---- prompts ---------------------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return encode(self.tokenizer, text)

    def chat_ids(self, messages: list[dict]) -> list[int]:
        return chat_ids(self.tokenizer, messages)

    def eos_ids(self) -> set[int]:
        """generate()'s end-of-sequence ids: the generation config's, else the tokenizer's."""
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        if eos is None:
            eos = self.tokenizer.eos_token_id
        if eos is None:
            return set()
        return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}

    # ---- generation ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        prompt_ids: Sequence[int],
        plan,
        max_new_tokens: int,
        sampling: Sampling | None = None,
        *,
        stop: Sequence[str] = (),
        on_text: Callable[[str], None] | None = None,
        on_prefill: Callable[[int, int], None] | None = None,
        cancel: threading.Event | None = None,
        ignore_eos: bool = False,
    ) -> Generation:
        """Prefill `prompt_ids` in the plan's chunks (`on_prefill(chunks_done, chunks)` after each), then decode
        up to `max_new_tokens` (replayed from a CUDA graph where the plan and the cache allow it, as `roofsim run`
        decodes: Generation.notes says which), calling `on_text(delta)` as text becomes safe to show. `cancel`
        set: stop after the current step (finish_reason "cancelled"). ignore_eos: go on past end-of-sequence
        tokens (a benchmark's fixed length)."""
        from roofsim.executor.build import make_cache
        from roofsim.executor.runner import graph_decoder, warm_up_kernels

        sampling = sampling or Sampling()
        n = len(prompt_ids)
        if n == 0:
            raise UserError("the prompt is empty: give it at least one token")
        if max_new_tokens <= 0:
            raise UserError(f"max_new_tokens must be positive, got {max_new_tokens}")
        device, cuda = self.device, self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        cache = make_cache(self.model, plan, max_tokens=n + max_new_tokens, gpu_spec=self.gpu_spec)
        setup_s = time.perf_counter() - t0
        engine = cache.runtime.engine
        cache.set_prompt_length(n)
        ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)
        chunk = min(plan.prefill_chunk or n, n)
        chunks = -(-n // chunk)
        processors = sampling.processors()
        generator = None
        if sampling.do_sample:
            generator = torch.Generator(device=device)
            generator.manual_seed(sampling.seed if sampling.seed is not None else int(time.time_ns() % 2**63))
        stream = TextStream(self.tokenizer, stop)
        eos = set() if ignore_eos else self.eos_ids()
        out = Generation(token_ids=[], text="", finish_reason="length", prompt_tokens=n, prefill_s=0.0)
        out.cache_setup_s = setup_s
        seen = ids  # prompt and generated ids (the repetition penalty looks at both, as generate's does)
        try:
            if not self._warm:
                warm_up_kernels(
                    self.model, ids[:, :chunk], engine, cache, n, forward=plan.weights == "resident"
                )
                self._warm = plan.weights == "resident"  # streamed: the attention calls again, no forward yet
            first = logits = nxt = decoder = None
            for i in range(chunks):
                if cancel is not None and cancel.is_set():
                    out.finish_reason = "cancelled"
                    return out
                s0 = engine.event(engine.compute)
                first = first or s0
                o = self.model(
                    ids[:, i * chunk : (i + 1) * chunk],
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
                s1 = engine.event(engine.compute)
                engine.synchronize()
                out.prefill_step_s.append(engine.elapsed_s(s0, s1))
                out.prefill_s = engine.elapsed_s(first, s1)
                logits = o.logits[:, -1]
                if on_prefill is not None:
                    on_prefill(i + 1, chunks)
            for step in range(max_new_tokens):
                if step:  # the token picked last step goes through the model
                    if cancel is not None and cancel.is_set():
                        out.finish_reason = "cancelled"
                        break
                    # captured on the first token it decodes, outside the step times, as `roofsim run` does
                    if step == 1:
                        decoder = graph_decoder(self.model, cache, None, out.notes, nxt)
                    s0 = engine.event(engine.compute)
                    if decoder is not None:  # the graph's output buffer: read before the next replay
                        logits = decoder.step(nxt)
                    else:
                        o = self.model(nxt, past_key_values=cache, use_cache=True, logits_to_keep=1)
                        logits = o.logits[:, -1]
                scores = logits.float()
                if processors:
                    scores = processors(seen, scores)
                if sampling.do_sample:
                    probs = torch.softmax(scores, dim=-1)
                    nxt = torch.multinomial(probs, 1, generator=generator)
                else:
                    nxt = scores.argmax(-1, keepdim=True)
                if step:
                    s1 = engine.event(engine.compute)
                    engine.synchronize()
                    out.decode_step_s.append(engine.elapsed_s(s0, s1))
                token = int(nxt.item())
                out.token_ids.append(token)
                if processors:
                    seen = torch.cat([seen, nxt], dim=-1)
                if token in eos:
                    out.finish_reason = "stop"
                    break
                delta = stream.push(token)
                if delta and on_text is not None:
                    on_text(delta)
                if stream.stopped:
                    out.finish_reason = "stop"
                    break
            tail = stream.finish()
            if tail and on_text is not None:
                on_text(tail)
            out.text = stream.text
            if cuda:
                out.peak_gpu_bytes = float(torch.cuda.max_memory_allocated(device))
            return out
        finally:
            cache.close()
            del cache
            if cuda:
                torch.cuda.empty_cache()


def encode(tokenizer, text: str, add_special_tokens: bool = True) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    """The tokenizer's chat template with the assistant's turn opened where it has one, else the messages as
    "role: content" lines and "assistant:"."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return encode(tokenizer, text, add_special_tokens=False)  # the template writes its own special tokens
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return encode(tokenizer, "\n".join([*lines, "assistant:"]))


def load_tokenizer(path: str | Path):
    """The checkpoint's own tokenizer, from its files only."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: no tokenizer could be loaded from its files ({first})") from None
