"""`roofsim serve CHECKPOINT_DIR`: OpenAI-compatible completions of one checkpoint under the plan chosen at start.

    POST /v1/completions        prompt, max_tokens (16), temperature (1; 0 is greedy), top_p, stop, seed, stream
    POST /v1/chat/completions   messages (the tokenizer's chat template, else "role: content" lines), the same
    GET  /v1/models             the one model
    GET  /metrics               requests, tokens in and out, measured prefill and decode tokens/s, the plan and
                                its predicted rates (JSON)

`stream: true` answers with server-sent events in OpenAI's chunk format, ending `data: [DONE]`. One request
generates at a time: requests queue on an asyncio lock, and the generation runs in a worker thread, so the event
loop keeps answering /metrics and taking requests meanwhile. The plan is chosen once, for the longest context the
server admits; a request whose prompt + max_tokens is longer gets HTTP 400. A client that goes away stops its
generation after the current step.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from roofsim.executor.generate import Generation, Sampling, TextModel
from roofsim.executor.machine import Chosen, Machine, choose_plan, mean_decode_s
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from roofsim.errors import UserError
from roofsim.specs.model import ModelSpec
from roofsim.workload import Workload


def plan_server(text: str, spec: ModelSpec, m: Machine, max_context: int | None) -> tuple[Chosen, int]:
    """The plan and the longest context (prompt + generated tokens) it serves. Without max_context: the model's
    max positions where a plan fits them, else (--plan auto) the longest context the planner fits here."""
    from roofsim.planner import search

    def at(ctx: int) -> Chosen:
        return choose_plan(text, spec, m, Workload(context=ctx, gen=1), objective="decode")

    if max_context is not None:
        return at(max_context), max_context
    try:
        return at(spec.max_positions), spec.max_positions
    except UserError:
        if text != "auto":
            raise UserError(
                f"plan {text} does not fit the model's {spec.max_positions} positions here: give --max-context"
            ) from None
    longest = search(spec, m.gpu, m.host, Workload(context=1024, gen=1), m.limits, objective="max-context")
    ctx = min(longest.max_context, spec.max_positions) // 1024 * 1024
    return at(ctx), ctx


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param, self.code = param, code


def _error(status: int, message: str, param=None, code=None, kind="invalid_request_error") -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status
    )


@dataclass
class Job:
    """One request, parsed: the prompt's ids and how to generate."""

    ids: list[int]
    max_tokens: int
    sampling: Sampling
    stop: list[str]
    stream: bool
    include_usage: bool


@dataclass
class Metrics:
    served: int = 0
    failed: int = 0
    cancelled: int = 0  # the client went away before the end
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prefill_s: float = 0.0
    decode_tokens: int = 0  # decode steps after each request's first (as Generation.decode_tokens_per_s)
    decode_s: float = 0.0
    last: dict = field(default_factory=dict)

    def add(self, g: Generation, predicted) -> None:
        self.served += 1
        self.prompt_tokens += g.prompt_tokens
        self.completion_tokens += len(g.token_ids)
        self.prefill_s += g.prefill_s
        self.decode_tokens += len(g.decode_step_s[1:])
        self.decode_s += sum(g.decode_step_s[1:])
        p = predicted.summary
        self.last = {
            "prompt_tokens": g.prompt_tokens,
            "completion_tokens": len(g.token_ids),
            "finish_reason": g.finish_reason,
            "prefill_s": g.prefill_s,
            "predicted_prefill_s": p.prefill_s,
            "decode_tokens_per_s": g.decode_tokens_per_s,
            "predicted_decode_tokens_per_s": 1 / mean_decode_s(p),
            "cache_setup_s": g.cache_setup_s,
        }


class Server:
    def __init__(
        self, tm: TextModel, chosen: Chosen, max_context: int, spec: ModelSpec, m: Machine, name=None
    ):
        self.tm, self.chosen, self.max_context, self.spec, self.machine = tm, chosen, max_context, spec, m
        self.name = name or tm.name
        self.created = int(time.time())
        self.lock = asyncio.Lock()
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="roofsim-generate")
        self.metrics = Metrics()
        self.queued = 0
        self.running = 0

    # ---- requests --------------------------------------------------------------------------------------------

    def _job(self, body: dict, ids: list[int], chat: bool) -> Job:
        if body.get("n", 1) != 1:
            raise BadRequest("n must be 1: this server generates one choice per request", "n")
        what = "messages" if chat else "prompt"
        if len(ids) >= self.max_context:
            raise BadRequest(
                f"the {what} is {len(ids)} tokens, and this server admits {self.max_context} with the answer (the "
                "context its plan was chosen for at start: roofsim serve --max-context); shorten it",
                what,
                "context_length_exceeded",
            )
        max_tokens = body.get("max_tokens")
        if chat:
            max_tokens = body.get("max_completion_tokens", max_tokens)
        if max_tokens is None:  # OpenAI's defaults: the rest of the context for chat, 16 for completions
            max_tokens = self.max_context - len(ids) if chat else 16
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise BadRequest(f"max_tokens must be a positive integer, got {max_tokens!r}", "max_tokens")
        if len(ids) + max_tokens > self.max_context:
            raise BadRequest(
                f"this request needs {len(ids)} {what} tokens + {max_tokens} max_tokens = {len(ids) + max_tokens} "
                f"tokens, and this server admits {self.max_context} (the context its plan was chosen for at start: "
                "roofsim serve --max-context); shorten the prompt or lower max_tokens",
                "max_tokens",
                "context_length_exceeded",
            )
        temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
        top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
        if top_p == 0.0:
            raise BadRequest("top_p must be above 0", "top_p")
        stop = body.get("stop")
        stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise BadRequest("stop must be a string or a list of strings", "stop")
        seed = body.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise BadRequest("seed must be an integer", "seed")
        options = body.get("stream_options") or {}
        return Job(
            ids=ids,
            max_tokens=max_tokens,
            sampling=Sampling(
                do_sample=temperature > 0, temperature=temperature or None, top_p=top_p, seed=seed
            ),
            stop=stop,
            stream=bool(body.get("stream", False)),
            include_usage=bool(isinstance(options, dict) and options.get("include_usage")),
        )

    def _prompt_ids(self, body: dict, chat: bool) -> list[int]:
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise BadRequest("messages must be a non-empty list of {role, content}", "messages")
            clean = []
            for msg in messages:
                if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
                    raise BadRequest("each message needs a role and a content", "messages")
                content = msg.get("content")
                if isinstance(content, list):  # content parts: only text ones carry anything here
                    content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
                if not isinstance(content, str):
                    raise BadRequest(
                        "a message's content must be a string or a list of text parts", "messages"
                    )
                clean.append({"role": msg["role"], "content": content})
            return self.tm.chat_ids(clean)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        if isinstance(prompt, str):
            ids = self.tm.encode(prompt)
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            ids = list(prompt)
        else:
            raise BadRequest(
                "prompt must be a string, or a list of token ids (one prompt per request)", "prompt"
            )
        if not ids:
            raise BadRequest("the prompt is empty", "prompt")
        return ids

    async def _parse(self, request: Request, chat: bool) -> Job:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BadRequest("the body must be a JSON object") from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        ids = await asyncio.to_thread(self._prompt_ids, body, chat)  # a long prompt takes a while to tokenize
        return self._job(body, ids, chat)

    async def _run(self, job: Job, on_text=None, cancel: threading.Event | None = None) -> Generation:
        """Wait for the lock, then generate in the worker thread. Cancelled (the client went away): the worker
        stops after its current step, and the lock is released only once it has."""
        cancel = cancel or threading.Event()
        self.queued += 1
        try:
            await self.lock.acquire()
        finally:
            self.queued -= 1
        self.running += 1
        try:
            loop = asyncio.get_running_loop()
            fut = loop.run_in_executor(self.worker, self._generate, job, on_text, cancel)
            try:
                return await asyncio.shield(fut)
            except asyncio.CancelledError:
                cancel.set()
                await asyncio.wait([fut])
                raise
        finally:
            self.running -= 1
            self.lock.release()

    def _generate(self, job: Job, on_text, cancel) -> Generation:
        from roofsim.predict import predict

        try:
            g = self.tm.generate(
                job.ids,
                self.chosen.plan,
                job.max_tokens,
                job.sampling,
                stop=job.stop,
                on_text=on_text,
                cancel=cancel,
            )
        except BaseException:
            self.metrics.failed += 1
            raise
        if g.finish_reason == "cancelled":
            self.metrics.cancelled += 1
        else:
            m = self.machine
            work = Workload(context=g.prompt_tokens, gen=max(1, len(g.token_ids)))
            self.metrics.add(g, predict(self.chosen.plan, self.spec, m.gpu, m.host, work, m.limits))
        return g

    # ---- responses -------------------------------------------------------------------------------------------

    def _usage(self, g: Generation) -> dict:
        return {
            "prompt_tokens": g.prompt_tokens,
            "completion_tokens": len(g.token_ids),
            "total_tokens": g.prompt_tokens + len(g.token_ids),
        }

    async def complete(self, request: Request, chat: bool):
        try:
            job = await self._parse(request, chat)
        except BadRequest as e:
            return _error(400, str(e), e.param, e.code)
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        head = {"id": rid, "created": int(time.time()), "model": self.name}
        if job.stream:
            return StreamingResponse(self._events(job, chat, head), media_type="text/event-stream")
        try:
            g = await self._run(job)
        except UserError as e:
            return _error(400, str(e))
        except Exception as e:  # noqa: BLE001 - the client gets the first line; the server log has the rest
            return _error(
                500,
                f"generation failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                kind="server_error",
            )
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": g.text}, "logprobs": None}
        else:
            choice = {"index": 0, "text": g.text, "logprobs": None}
        choice["finish_reason"] = g.finish_reason
        obj = "chat.completion" if chat else "text_completion"
        return JSONResponse({**head, "object": obj, "choices": [choice], "usage": self._usage(g)})

    async def _events(self, job: Job, chat: bool, head: dict):
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(text: str | None, finish: str | None = None) -> str:
            if chat:
                delta = {} if text is None else {"content": text}
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            return _sse({**head, "object": obj, "choices": [choice]})

        def on_text(delta: str) -> None:  # in the worker thread
            loop.call_soon_threadsafe(queue.put_nowait, delta)

        def done(t: asyncio.Task) -> None:
            queue.put_nowait(None)
            if not t.cancelled():
                t.exception()  # retrieved here; the stream reports it

        task = asyncio.ensure_future(self._run(job, on_text, cancel))
        task.add_done_callback(done)
        try:
            if chat:
                choice = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None}
                yield _sse({**head, "object": obj, "choices": [{**choice, "finish_reason": None}]})
            while (delta := await queue.get()) is not None:
                yield chunk(delta)
            try:
                g = task.result()
            except Exception as e:  # noqa: BLE001 - the stream is under way: an error event ends it
                yield _sse({"error": {"message": f"generation failed: {e}", "type": "server_error"}})
            else:
                yield chunk(None, g.finish_reason)
                if job.include_usage:
                    yield _sse({**head, "object": obj, "choices": [], "usage": self._usage(g)})
            yield "data: [DONE]\n\n"
        finally:
            if not task.done():  # the client went away: stop the generation after its current step
                cancel.set()
                task.cancel()

    # ---- status ----------------------------------------------------------------------------------------------

    def metrics_doc(self) -> dict:
        mt, p = self.metrics, self.chosen.prediction.summary
        return {
            "model": self.name,
            "max_context": self.max_context,
            "plan": self.chosen.plan.model_dump(mode="json"),
            "plan_chosen": self.chosen.how,
            "gpu_spec": self.machine.gpu.name,
            "gpu_spec_from": self.machine.gpu_from,
            "predicted": {
                "at_context": self.max_context,
                "prefill_tokens_per_s": self.max_context / p.prefill_s,
                "decode_tokens_per_s": 1 / p.decode_s_per_token,
            },
            "requests": {
                "served": mt.served,
                "failed": mt.failed,
                "cancelled": mt.cancelled,
                "running": self.running,
                "queued": self.queued,
            },
            "tokens": {"prompt": mt.prompt_tokens, "completion": mt.completion_tokens},
            "measured": {
                "prefill_tokens_per_s": mt.prompt_tokens / mt.prefill_s if mt.prefill_s else None,
                "decode_tokens_per_s": mt.decode_tokens / mt.decode_s if mt.decode_s else None,
            },
            "last_request": mt.last or None,
        }


def _number(body: dict, name: str, default: float, lo: float, hi: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not lo <= value <= hi:
        raise BadRequest(f"{name} must be a number from {lo:g} to {hi:g}, got {value!r}", name)
    return float(value)


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def make_app(server: Server) -> Starlette:
    async def completions(request):
        return await server.complete(request, chat=False)

    async def chat(request):
        return await server.complete(request, chat=True)

    async def models(request):
        entry = {
            "id": server.name,
            "object": "model",
            "created": server.created,
            "owned_by": "roofsim",
            "max_model_len": server.max_context,
        }
        return JSONResponse({"object": "list", "data": [entry]})

    async def metrics(request):
        return JSONResponse(server.metrics_doc())

    @asynccontextmanager
    async def lifespan(app):
        yield
        server.worker.shutdown(wait=False, cancel_futures=True)

    app = Starlette(
        routes=[
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.server = server
    return app
