"""The built-in judges: the local HF judge on a tiny model built from config, and the HTTP judge
against a small OpenAI-compatible server this test starts (http.server in a thread)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from ldreg.judging.judge import JudgeError, JudgeQuery, checked_verdicts, pairwise_prompt
from ldreg.testing import load_plugin

QUERIES = [JudgeQuery("Human: How do I bake bread?\n\nAssistant:", "Mix flour, water and yeast; knead; bake.", "No."),
           JudgeQuery("Human: What is a verb?\n\nAssistant:", "A fish.", "A word that names an action.")]


def test_both_judges_are_registered_through_the_entry_point_hook():
    judges = load_plugin().judges
    assert {"hf", "http"} <= set(judges.names())
    assert judges.registration("hf").plugin == "ldreg.judges"


def test_the_hf_judge_reads_the_next_token_and_is_deterministic(tiny_model_dir):
    judge = load_plugin().judges.get("hf")
    settings = judge.settings({"model": str(tiny_model_dir)})
    scores = judge.scores(QUERIES, settings)
    assert scores == judge.scores(QUERIES, settings)  # no sampling: the same numbers again
    assert all(s == s and abs(s) < 50 for s in scores)
    verdicts = checked_verdicts(judge, QUERIES, settings)
    assert verdicts == ["A" if s > 0 else "B" for s in scores]
    # the tiny tokenizer has no chat template: the prompt ends by asking for the letter
    _, tokenizer = judge._model(settings)
    assert judge.text(tokenizer, QUERIES[0], 1500).endswith("Which response is better, A or B?\nAnswer:")
    assert judge.identity(settings)["model"] == str(tiny_model_dir)


def test_the_hf_judge_calibrates_by_the_content_free_prompt(tiny_model_dir):
    """Calibrated score = raw score - the raw score of the same prompt with both responses "N/A";
    a judge with a pure position bias then scores 0 on content-free input."""
    judge = load_plugin().judges.get("hf")
    raw = judge.settings({"model": str(tiny_model_dir), "calibrate": "none"})
    calibrated = judge.settings({"model": str(tiny_model_dir)})
    priors = judge.raw_scores([JudgeQuery(q.prompt, "N/A", "N/A") for q in QUERIES], raw)
    expected = [s - p for s, p in zip(judge.scores(QUERIES, raw), priors)]
    assert judge.scores(QUERIES, calibrated) == pytest.approx(expected, abs=1e-6)
    assert any(abs(p) > 1e-6 for p in priors)  # the untrained model does prefer a letter
    assert judge.scores([JudgeQuery(QUERIES[0].prompt, "N/A", "N/A")], calibrated) == [0.0]
    assert judge.identity(raw)["calibrate"] == "none"
    with pytest.raises(JudgeError, match="calibrate='x' is not one of content_free, none"):
        judge.scores(QUERIES, {**raw, "calibrate": "x"})


def test_the_hf_judge_never_reaches_a_hub(tmp_path):
    judge = load_plugin().judges.get("hf")
    with pytest.raises(JudgeError, match="never downloads"):
        judge.verdicts(QUERIES, judge.settings({"model": "HuggingFaceTB/SmolLM2-135M-Instruct"}))
    with pytest.raises(JudgeError, match="unknown option 'modle'.*accepts: model"):
        judge.settings({"modle": "x"})


def test_the_prompt_keeps_both_responses_when_one_is_long():
    text = pairwise_prompt(JudgeQuery("hi", "x" * 5000, "short answer"), max_chars=100)
    assert "short answer" in text and "x" * 101 not in text and text.index("[Response A]") < text.index("[Response B]")


class _Endpoint(BaseHTTPRequestHandler):
    """Answers like a chat model that prefers the response containing 'action' (or fails on demand)."""

    seen: list = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append((self.path, self.headers.get("Authorization"), body))
        if body["model"] == "broken":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b'{"error": "model overloaded"}')
            return
        user = body["messages"][-1]["content"]
        a = user.split("[Response A]")[1].split("[Response B]")[0]
        reply = "Response A." if ("action" in a or "flour" in a) else "B"
        if body["model"] == "mute":
            reply = "I cannot decide."
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def endpoint():
    server = HTTPServer(("127.0.0.1", 0), _Endpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Endpoint.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_the_http_judge_asks_a_chat_endpoint_with_the_key_from_the_environment(endpoint, monkeypatch):
    judge = load_plugin().judges.get("http")
    monkeypatch.setenv("H3_TEST_KEY", "sk-test-123")
    settings = judge.settings({"base_url": endpoint, "model": "judge-1", "api_key_env": "H3_TEST_KEY"})
    swapped = [JudgeQuery(q.prompt, q.second, q.first) for q in QUERIES]
    assert checked_verdicts(judge, QUERIES + swapped, settings) == ["A", "B", "B", "A"]
    path, auth, body = _Endpoint.seen[0]
    assert path == "/v1/chat/completions" and auth == "Bearer sk-test-123"
    assert body["model"] == "judge-1" and body["temperature"] == 0 and body["messages"][0]["role"] == "system"
    assert "sk-test-123" not in json.dumps(judge.identity(settings))  # the key is never part of a record
    mute = judge.settings({"base_url": endpoint, "model": "mute", "api_key_env": ""})
    assert judge.verdicts(QUERIES[:1], mute) == ["tie"] and _Endpoint.seen[-1][1] is None


def test_the_http_judge_fails_with_one_message_naming_the_fix(endpoint, monkeypatch):
    judge = load_plugin().judges.get("http")
    monkeypatch.delenv("H3_ABSENT_KEY", raising=False)
    with pytest.raises(JudgeError, match="H3_ABSENT_KEY .*is not set"):
        judge.verdicts(QUERIES, judge.settings({"base_url": endpoint, "model": "m", "api_key_env": "H3_ABSENT_KEY"}))
    with pytest.raises(JudgeError, match="HTTP 500 .*model overloaded"):
        judge.verdicts(QUERIES, judge.settings({"base_url": endpoint, "model": "broken", "api_key_env": ""}))
    with pytest.raises(JudgeError, match="option 'base_url' is required"):
        judge.settings({"model": "m"})
    closed = endpoint.rsplit(":", 1)[0] + ":9/v1"  # the discard port: nothing listens
    with pytest.raises(JudgeError, match="cannot reach .*check the option base_url"):
        judge.verdicts(QUERIES, judge.settings({"base_url": closed, "model": "m", "api_key_env": "", "timeout": 5}))
