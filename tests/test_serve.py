"""`roofsim serve`: uvicorn on a loopback port in a background thread, a real HTTP client (httpx). Streamed and
plain completions give transformers' greedy text; chat applies the template; /metrics, /v1/models, a too-long
request's 400, stop strings, and requests queueing behind a running one while /metrics still answers."""

import json
import socket
import threading
import time

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from roofsim.executor.check import stock_greedy_text, word_tokenizer  # noqa: E402
from test_generate import CHAT, PROMPT, write_tiny_checkpoint  # noqa: E402

from roofsim.cli import main  # noqa: E402

MAX_CONTEXT = 120
WAIT_S = 20  # bound on every wait for the server (never a timing assertion)


def _wait(cond, what: str) -> None:
    end = time.monotonic() + WAIT_S
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, checkpoint, the Server): `roofsim serve` as the command line builds it, its uvicorn.run
    replaced by a server on a free loopback port in a thread."""
    tmp = tmp_path_factory.mktemp("serve")
    ckpt = write_tiny_checkpoint(tmp / "tiny-llama")
    plan = tmp / "plan.json"
    plan.write_text(json.dumps({"plan": {"family": "cpu_attention", "prefill_chunk": 16}}))
    built = {}
    mp = pytest.MonkeyPatch()
    mp.setattr(uvicorn, "run", lambda app, **kw: built.update(app=app, **kw))
    args = ["serve", str(ckpt), "--plan", str(plan), "--device", "cpu", "--max-context", str(MAX_CONTEXT)]
    assert main([*args, "--port", "0", "--name", "tiny"]) == 0
    mp.undo()
    assert built["host"] == "127.0.0.1"
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(built["app"], log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    _wait(lambda: server.started, "uvicorn to start")
    state = built["app"].state.server  # the Server behind the routes (the queueing test holds its worker)
    try:
        yield f"http://127.0.0.1:{port}", ckpt, state
    finally:
        server.should_exit = True
        thread.join(timeout=WAIT_S)
        sock.close()
        assert not thread.is_alive()


def _stream(client: httpx.Client, path: str, body: dict) -> list[dict]:
    chunks = []
    with client.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if not line:
                continue
            assert line.startswith("data: ")
            if line == "data: [DONE]":
                break
            chunks.append(json.loads(line[len("data: ") :]))
    return chunks


def test_streamed_completion_equals_plain_and_transformers_greedy(served):
    url, ckpt, _ = served
    ids = word_tokenizer(128)(PROMPT)["input_ids"]
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 10, "temperature": 0}
    with httpx.Client(base_url=url, timeout=WAIT_S) as client:
        chunks = _stream(client, "/v1/completions", body)
        plain = client.post("/v1/completions", json=body).json()
    assert all(c["object"] == "text_completion" and c["model"] == "tiny" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1 and chunks[-1]["choices"][0]["finish_reason"] == "length"
    streamed = "".join(c["choices"][0]["text"] for c in chunks)
    assert len([c for c in chunks if c["choices"][0]["text"]]) > 1  # text arrived in pieces
    assert streamed == plain["choices"][0]["text"] == stock_greedy_text(ckpt, ids, 10)
    assert plain["usage"] == {"prompt_tokens": 40, "completion_tokens": 10, "total_tokens": 50}


def test_chat_applies_the_template(served):
    url, ckpt, _ = served
    messages = [{"role": "user", "content": "w3 w4 w5"}]
    tok = word_tokenizer(128, CHAT)
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    with httpx.Client(base_url=url, timeout=WAIT_S) as client:
        chunks = _stream(
            client, "/v1/chat/completions", {"messages": messages, "max_tokens": 6, "temperature": 0}
        )
    assert chunks[0]["object"] == "chat.completion.chunk"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    got = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert got == stock_greedy_text(ckpt, ids, 6)


def test_stop_string_ends_the_text_before_it(served):
    url, ckpt, _ = served
    ids = word_tokenizer(128)(PROMPT)["input_ids"]
    words = stock_greedy_text(ckpt, ids, 10).split()
    stop = " " + words[4]
    want = " ".join(words)[: " ".join(words).index(stop)]
    body = {"prompt": PROMPT, "max_tokens": 10, "temperature": 0, "stop": [stop]}
    with httpx.Client(base_url=url, timeout=WAIT_S) as client:
        plain = client.post("/v1/completions", json=body).json()["choices"][0]
        chunks = _stream(client, "/v1/completions", body)
    assert plain["text"] == want and plain["finish_reason"] == "stop"
    assert "".join(c["choices"][0]["text"] for c in chunks) == want


def test_too_long_a_request_gets_400_and_models_metrics_answer(served):
    url, _, _ = served
    with httpx.Client(base_url=url, timeout=WAIT_S) as client:
        r = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": MAX_CONTEXT})
        assert r.status_code == 400
        err = r.json()["error"]
        assert err["code"] == "context_length_exceeded" and err["param"] == "max_tokens"
        assert f"admits {MAX_CONTEXT}" in err["message"] and "40 prompt tokens" in err["message"]
        r = client.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": " ".join([PROMPT] * 3)}]}
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
        assert "is 124 tokens" in r.json()["error"]["message"]
        r = client.post("/v1/completions", json={"prompt": PROMPT, "temperature": 3})
        assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"
        models = client.get("/v1/models").json()
        assert [m["id"] for m in models["data"]] == ["tiny"] and models["data"][0][
            "max_model_len"
        ] == MAX_CONTEXT
        client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 4, "temperature": 0})
        m = client.get("/metrics").json()
    assert m["plan"]["family"] == "cpu_attention" and m["max_context"] == MAX_CONTEXT
    assert m["requests"]["served"] >= 1 and m["requests"]["running"] == 0
    assert m["tokens"]["prompt"] >= 40 and m["tokens"]["completion"] >= 4
    assert m["measured"]["prefill_tokens_per_s"] > 0 and m["measured"]["decode_tokens_per_s"] > 0
    assert m["predicted"]["prefill_tokens_per_s"] > 0 and m["predicted"]["decode_tokens_per_s"] > 0
    last = m["last_request"]
    assert last["prompt_tokens"] == 40 and last["completion_tokens"] == 4 and last["predicted_prefill_s"] > 0


def test_requests_queue_behind_a_running_one_and_metrics_still_answer(served, monkeypatch):
    url, _, state = served
    release = threading.Event()
    generate = state.tm.generate

    def held(*a, **kw):  # the first request holds the worker until the test lets it go
        assert release.wait(WAIT_S)
        return generate(*a, **kw)

    monkeypatch.setattr(state.tm, "generate", held)
    body = {"prompt": PROMPT, "max_tokens": 5, "temperature": 0}
    results = {}

    def post(key):
        with httpx.Client(base_url=url, timeout=WAIT_S) as client:
            results[key] = client.post("/v1/completions", json=body).json()

    threads = [threading.Thread(target=post, args=(k,)) for k in ("a", "b")]
    with httpx.Client(base_url=url, timeout=WAIT_S) as client:
        threads[0].start()
        _wait(lambda: client.get("/metrics").json()["requests"]["running"] == 1, "the first request to run")
        threads[1].start()
        _wait(lambda: client.get("/metrics").json()["requests"]["queued"] == 1, "the second to queue")
        release.set()
        for t in threads:
            t.join(WAIT_S)
        m = client.get("/metrics").json()
    assert results["a"]["choices"][0]["text"] == results["b"]["choices"][0]["text"] != ""
    assert m["requests"]["running"] == 0 and m["requests"]["queued"] == 0


def test_a_client_that_goes_away_stops_its_generation(served, monkeypatch):
    url, _, state = served
    generate = state.tm.generate

    def after_cancel(*a, **kw):  # starts only once the server has seen the client go
        assert kw["cancel"].wait(WAIT_S)
        return generate(*a, **kw)

    monkeypatch.setattr(state.tm, "generate", after_cancel)
    body = {"messages": [{"role": "user", "content": "w1"}], "max_tokens": 50, "stream": True}
    with httpx.Client(base_url=url, timeout=WAIT_S) as client:
        before = client.get("/metrics").json()["requests"]
        with client.stream("POST", "/v1/chat/completions", json=body) as r:
            first = next(r.iter_lines())
        assert json.loads(first[len("data: ") :])["choices"][0]["delta"]["role"] == "assistant"

        def settled():
            req = client.get("/metrics").json()["requests"]
            return req["cancelled"] == before["cancelled"] + 1 and req["running"] == 0

        _wait(settled, "the generation to stop")
        assert client.get("/metrics").json()["requests"]["served"] == before["served"]


def test_serve_plans_for_the_models_positions_by_default(served):
    from roofsim.executor.machine import this_machine
    from roofsim.executor.serve import plan_server

    from roofsim.specs import load_model

    _, ckpt, _ = served
    spec = load_model(str(ckpt))
    chosen, ctx = plan_server("auto", spec, this_machine(torch.device("cpu")), None)
    assert ctx == spec.max_positions == 4096 and chosen.prediction.feasible
