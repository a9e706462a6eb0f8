"""``ferrule serve`` in a subprocess on a free port, driven by the official ``openai`` client
(sync and async, streaming and not) and by raw HTTP for bad input."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from ferrule_core.testing import tiny_config, write_tiny_model

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

KEY = "test-key-123"
NAME = "tiny"
TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen2")
    write_tiny_model(folder, tiny_config("Qwen2Config", initializer_range=0.2))
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = TEMPLATE
    config_path.write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def server(model_dir, serve):
    args = ("--api-key", KEY, "--served-model-name", NAME, "--kv-cache-gib", "0.05")
    with serve(model_dir, *args) as url:
        yield url


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)


def _expected(model_dir, prompt, n):
    from ferrule import LLM, SamplingParams

    llm = LLM(model_dir)
    out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=n, ignore_eos=True))
    return out[0].outputs[0]


def test_models_lists_the_served_name(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [NAME]


def test_completion_equals_llm_generate(client, model_dir):
    expected = _expected(model_dir, "The quick brown fox", 8)
    reply = client.completions.create(
        model=NAME,
        prompt="The quick brown fox",
        max_tokens=8,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert reply.choices[0].text == expected.text
    assert reply.usage.completion_tokens == 8
    stream = client.completions.create(
        model=NAME,
        prompt="The quick brown fox",
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected.text
    assert chunks[-1].usage.completion_tokens == 8


def test_chat_completion_streaming_and_not(client):
    messages = [{"role": "user", "content": "Say something about foxes."}]
    reply = client.chat.completions.create(
        model=NAME, messages=messages, max_tokens=6, temperature=0, seed=1
    )
    text = reply.choices[0].message.content
    assert reply.choices[0].message.role == "assistant" and reply.usage.prompt_tokens > 0
    stream = client.chat.completions.create(
        model=NAME, messages=messages, max_tokens=6, temperature=0, stream=True
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces) == text


def test_async_client_runs_requests_concurrently(server):
    async def main():
        aclient = openai.AsyncOpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)
        replies = await asyncio.gather(
            *(
                aclient.completions.create(model=NAME, prompt=f"item {i}", max_tokens=4)
                for i in range(12)
            )
        )
        await aclient.close()
        return replies

    replies = asyncio.run(main())
    assert all(r.choices[0].finish_reason in ("stop", "length") for r in replies)


BAD = [
    # (method, path, headers, body bytes, status, fragment)
    ("POST", "/v1/completions", {}, b'{"model": "tiny", "prompt": "x"}', 401, "API key"),
    ("GET", "/v1/models", {"Authorization": "Bearer wrong"}, None, 401, "API key"),
    ("POST", "/v1/completions", None, b"{not json", 400, "not valid JSON"),
    ("POST", "/v1/completions", None, b'{"model": "tiny", "prompt": "\xff\xfe"}', 400, "UTF-8"),
    ("POST", "/v1/completions", None, b"[1, 2]", 400, "JSON object"),
    ("POST", "/v1/completions", None, b'{"model": "nope", "prompt": "x"}', 404, "nope"),
    ("POST", "/v1/completions", None, b'{"prompt": "x"}', 422, "model"),
    ("POST", "/v1/completions", None, b'{"model": "tiny", "prompt": "x", "n": "two"}', 422, "n"),
    (
        "POST",
        "/v1/completions",
        None,
        b'{"model": "tiny", "prompt": "x", "max_tokens": -1}',
        400,
        "max_tokens",
    ),
    ("POST", "/v1/completions", None, b'{"model": "tiny", "prompt": "x", "n": 100000}', 400, "n"),
    (
        "POST",
        "/v1/completions",
        None,
        b'{"model": "tiny", "prompt": "x", "temperature": 9}',
        400,
        "temperature",
    ),
    (
        "POST",
        "/v1/completions",
        None,
        b'{"model": "tiny", "prompt": "x y z " }'.replace(b"x y z ", b"x " * 5000),
        400,
        "context",
    ),
    ("POST", "/v1/chat/completions", None, b'{"model": "tiny", "messages": []}', 400, "messages"),
    (
        "POST",
        "/v1/chat/completions",
        None,
        b'{"model": "tiny", "messages": [{"role": "bot"}]}',
        422,
        "role",
    ),
    (
        "POST",
        "/v1/completions",
        None,
        b'{"model": "tiny", "prompt": "' + b"a" * (5 << 20) + b'"}',
        413,
        "larger",
    ),
    ("POST", "/detokenize", None, b'{"tokens": [999999]}', 400, "outside"),
    ("POST", "/detokenize", None, b'{"tokens": "abc"}', 422, "tokens"),
    ("POST", "/tokenize", None, b'{"prompt": 5}', 422, "prompt"),
    ("POST", "/v1/completions", None, b'{"model": "tiny", "prompt": []}', 400, "prompt"),
    ("POST", "/v1/completions", None, b'{"model": "tiny", "prompt": [-1, 2]}', 400, "prompt"),
    (
        "POST",
        "/v1/completions",
        None,
        b'{"model": "tiny", "prompt": "x", "top_p": 0}',
        400,
        "top_p",
    ),
    (
        "POST",
        "/v1/completions",
        None,
        b'{"model": "tiny", "prompt": "x", "top_k": -5}',
        400,
        "top_k",
    ),
    (
        "POST",
        "/v1/completions",
        None,
        b'{"model": "tiny", "prompt": "x", "logprobs": 99}',
        400,
        "logprobs",
    ),
    (
        "POST",
        "/v1/completions",
        None,
        b'{"model": "tiny", "prompt": "x", "echo": true}',
        400,
        "echo",
    ),
    (
        "POST",
        "/v1/completions",
        None,
        b'{"model": "tiny", "prompt": "x", "presence_penalty": 5}',
        400,
        "presence_penalty",
    ),
    (
        "POST",
        "/v1/completions",
        None,
        b'{"model": "tiny", "prompt": "x", "stop": [1]}',
        422,
        "stop",
    ),
    (
        "POST",
        "/v1/completions",
        None,
        b'{"model": "tiny", "prompt": "x", "max_tokens": 100000}',
        400,
        "max_tokens",
    ),
    (
        "POST",
        "/v1/completions",
        None,
        b'{"model": "tiny", "prompt": "x", "stream": [1]}',
        422,
        "stream",
    ),
    ("POST", "/v1/chat/completions", None, b'{"model": "tiny", "messages": "hi"}', 422, "messages"),
    (
        "POST",
        "/v1/chat/completions",
        None,
        b'{"model": "tiny", "messages": [{"role": "user", "content": 5}]}',
        422,
        "content",
    ),
    (
        "POST",
        "/v1/chat/completions",
        None,
        b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 3}',
        400,
        "top_logprobs",
    ),
    (
        "POST",
        "/v1/chat/completions",
        None,
        b'{"model": "tiny", "messages": [{"role": "user", "content": [{"type": "image_url", '
        b'"image_url": {"url": "http://x/y.png"}}]}]}',
        400,
        "images",
    ),
    (
        "POST",
        "/v1/chat/completions",
        None,
        b'{"model": "other", "messages": [{"role": "user", "content": "hi"}]}',
        404,
        "other",
    ),
    (
        "POST",
        "/v1/chat/completions",
        {"Authorization": "Basic abc"},
        b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}',
        401,
        "API key",
    ),
]


@pytest.mark.parametrize(("method", "path", "headers", "body", "status", "fragment"), BAD)
def test_bad_requests_get_openai_errors(server, method, path, headers, body, status, fragment):
    if headers is None:
        headers = {"Authorization": f"Bearer {KEY}"}
    response = httpx.request(method, f"{server}{path}", headers=headers, content=body, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert fragment in error["message"] or fragment == error.get("param"), error
    assert httpx.get(f"{server}/health", timeout=5).status_code == 200


def test_metrics_tokenize_and_detokenize(server):
    auth = {"Authorization": f"Bearer {KEY}"}
    ids = httpx.post(f"{server}/tokenize", json={"prompt": "hello fox"}, headers=auth).json()
    assert ids["count"] == len(ids["tokens"]) > 0
    text = httpx.post(f"{server}/detokenize", json={"tokens": ids["tokens"]}, headers=auth)
    assert text.json()["prompt"] == "hello fox"
    metrics = httpx.get(f"{server}/metrics", headers=auth).text
    for name in (
        "ferrule_num_requests_running",
        "ferrule_kv_cache_usage_perc",
        "ferrule_time_to_first_token_seconds",
        "ferrule_generation_tokens_total",
    ):
        assert name in metrics


def test_300_streams_with_a_third_cut_off_leave_the_server_clean(server, model_dir):
    from ferrule import LLM, SamplingParams

    prompts = [[10 + (i % 200), 11 + (i % 97), 12 + (i % 53)] for i in range(300)]
    expected = LLM(model_dir).generate(
        prompts, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    )
    auth = {"Authorization": f"Bearer {KEY}"}

    async def one(index: int, client) -> str | None:
        body = {
            "model": NAME,
            "prompt": prompts[index],
            "max_tokens": 8,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
        }
        cut_after = 1 + index % 4 if index % 3 == 0 else None  # a third leave early
        text, events = "", 0
        async with client.stream("POST", "/v1/completions", json=body, headers=auth) as reply:
            assert reply.status_code == 200
            async for line in reply.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                events += 1
                text += json.loads(line[6:])["choices"][0]["text"]
                if cut_after is not None and events >= cut_after:
                    return None  # closing the response drops the connection
        return text

    async def main():
        limits = httpx.Limits(max_connections=400)
        async with httpx.AsyncClient(base_url=server, timeout=120, limits=limits) as client:
            return await asyncio.gather(*(one(i, client) for i in range(300)))

    texts = asyncio.run(main())
    finished = [(i, t) for i, t in enumerate(texts) if t is not None]
    # a stream whose whole text came in fewer events than its cut point was not cut
    assert 200 <= len(finished) <= 220
    for index, text in finished:
        assert text == expected[index].outputs[0].text, index
    assert httpx.get(f"{server}/health", timeout=5).status_code == 200
    deadline = time.monotonic() + 20
    while True:
        metrics = httpx.get(f"{server}/metrics", headers=auth).text
        values = {
            line.split()[0]: float(line.split()[1])
            for line in metrics.splitlines()
            if line and not line.startswith("#")
        }
        idle = values["ferrule_num_requests_running"] == 0
        idle = idle and values["ferrule_num_requests_waiting"] == 0
        if (idle and values["ferrule_kv_cache_usage_perc"] == 0) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert values["ferrule_num_requests_running"] == 0
    assert values["ferrule_num_requests_waiting"] == 0
    assert values["ferrule_kv_cache_usage_perc"] == 0


def test_bench_serve_reports_latencies(ferrule, server):
    done = ferrule(
        "bench",
        "serve",
        "--url",
        f"{server}/v1",
        "--api-key",
        KEY,
        "--num-prompts",
        "12",
        "--request-rate",
        "50",
        "--input-len",
        "16",
        "--output-len",
        "6",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["completed"] == 12 and summary["failed"] == 0
    assert summary["output_tokens"] > 0 and summary["ttft_s"]["p99"] >= summary["ttft_s"]["p50"]
