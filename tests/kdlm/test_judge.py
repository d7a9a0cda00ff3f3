"""The LLM judge end to end against a real OpenAI-compatible HTTP server on loopback, and its error paths.

The server (stdlib `http.server` in a thread) speaks the chat-completions protocol. Its judge is
deterministic: an answer of w words scores min(10, w + 1), and Assistant 1 gets +1 (a position bias
that asking in both orders must cancel). A plan tells it to fail the next requests with 500, 429, a
garbage reply, a malformed body, a dropped connection, a slow answer or a 401.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest

from kdlm.cli import main
from kdlm.evaluation.judge import JudgeConfig, JudgeError, judge_evaluation, parse_scores, review_prompt
from kdlm.schemas import EVAL, RECORDS, read_metadata, write_table

KEY = "sk-test-5f1b2c9e-never-write-me"
REFERENCE = "a b c d"  # 4 words → 5
STUDENTS = ["x y", "x", "x y z w v"]  # → 3, 2, 6
_ANSWER = re.compile(r"\[The Start of Assistant (\d)'s Answer\]\n(.*?)\n\n\[The End of Assistant \1's Answer\]", re.S)


def _score(answer: str) -> int:
    return min(10, len(answer.split()) + 1)


class JudgeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.plan: deque[str] = deque()
        self.requests: list[dict] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_POST(self) -> None:
        server: JudgeServer = self.server  # type: ignore[assignment]
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
            behaviour = server.plan.popleft() if server.plan else "ok"
            server.requests.append({"auth": self.headers.get("Authorization"), "body": body, "path": self.path})
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            self._respond(behaviour, body)

    def _respond(self, behaviour: str, body: dict) -> None:
        if behaviour == "drop":
            self.close_connection = True
            return
        if behaviour == "slow":
            time.sleep(1.0)
        if behaviour in ("500", "429", "401"):
            self._send(int(behaviour), b'{"error": "planned failure"}', {"Retry-After": "0"} if behaviour == "429" else {})
            return
        if behaviour == "badjson":
            self._send(200, b"<html>proxy error</html>")
            return
        prompt = body["messages"][-1]["content"]
        answers = {int(n): text for n, text in _ANSWER.findall(prompt)}
        text = "I cannot judge this." if behaviour == "garbage" else (
            f"{min(10, _score(answers[1]) + 1)} {_score(answers[2])}\nAssistant 2 is more complete."
        )
        reply = {"id": "x", "object": "chat.completion", "model": body["model"],
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
        self._send(200, json.dumps(reply).encode())

    def _send(self, status: int, payload: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def server():
    srv = JudgeServer()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def task(tmp_path) -> dict:
    ids = [f"e{i}" for i in range(len(STUDENTS))]
    records = pd.DataFrame({"id": ids, "instruction": [f"Question {i}?" for i in range(3)], "input": ["", "ctx", ""],
                            "output": [REFERENCE] * 3, "dataset": ["t"] * 3})  # fmt: skip
    write_table(records, tmp_path / "records.parquet", RECORDS)
    evaluation = pd.DataFrame({"id": ids, "prompt": ["Human:\n..."] * 3, "reference": [REFERENCE] * 3,
                               "prediction": STUDENTS, "rouge_l": [0.0] * 3, "exact_match": [0.0] * 3,
                               "n_response_tokens": [1] * 3, "finish_reason": ["eos"] * 3})  # fmt: skip
    label = {"kind": "run", "model": "s__t/gt/fkl/seed0", "student": "s", "teacher": "t", "source": "gt",
             "method": "fkl", "seed": 0, "task": "t1"}  # fmt: skip
    write_table(evaluation, tmp_path / "eval.parquet", EVAL, metadata=label)
    return {"records": tmp_path / "records.parquet", "eval": tmp_path / "eval.parquet"}


def _cfg(server: JudgeServer, **kw) -> JudgeConfig:
    return JudgeConfig(**{"base_url": server.url, "model": "judge-1", "api_key_env": "KDLM_TEST_JUDGE_KEY",
                          "concurrency": 2, "max_retries": 3, "timeout": 5.0, "backoff": 0.01, **kw})  # fmt: skip


# per example: student = s + 1/2, reference = 5 + 1/2 (the +1 bias of Assistant 1, averaged over both orders)
EXPECTED = sum(_score(s) + 0.5 for s in STUDENTS) / (3 * (_score(REFERENCE) + 0.5))


def test_parse_scores():
    assert parse_scores("8 6\nBecause.") == (8.0, 6.0)
    assert parse_scores("\n 7.5, 9\n") == (7.5, 9.0)
    assert parse_scores("**8 6**") == (8.0, 6.0)
    assert parse_scores("Score: 8") is None
    assert parse_scores("11 3") is None
    assert parse_scores("") is None


def test_prompt_has_the_newlines_the_reference_code_forgot():
    prompt = review_prompt("q?", "one", "two")
    assert "[Question]\nq?\n\n[The Start of Assistant 1's Answer]\none\n\n[The End of Assistant 1's Answer]\n\n" in prompt
    assert "[The Start of Assistant 2's Answer]\ntwo\n\n[The End of Assistant 2's Answer]\n\n[System]\n" in prompt


def test_end_to_end_both_orders_cache_and_no_key_in_outputs(server, task, tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setenv("KDLM_TEST_JUDGE_KEY", KEY)
    out = tmp_path / "judge" / "t1.parquet"
    argv = ["-v", "judge", "--eval", str(task["eval"]), "--records", str(task["records"]), "--out", str(out),
            "--base-url", server.url, "--model", "judge-1", "--api-key-env", "KDLM_TEST_JUDGE_KEY",
            "--concurrency", "2", "--backoff", "0.01"]  # fmt: skip
    assert main(argv) == 0
    assert len(server.requests) == 6  # 3 examples × 2 orders
    assert {r["auth"] for r in server.requests} == {f"Bearer {KEY}"}
    assert {r["path"] for r in server.requests} == {"/v1/chat/completions"}
    prompts = [r["body"]["messages"][-1]["content"] for r in server.requests]
    assert sum(f"Assistant 1's Answer]\n{STUDENTS[0]}\n\n" in p for p in prompts) == 1  # student first
    assert sum(f"Assistant 2's Answer]\n{STUDENTS[0]}\n\n" in p for p in prompts) == 1  # swapped
    assert any("[Question]\nQuestion 1?\n\nctx\n\n" in p for p in prompts)  # instruction + input, not the template
    df = pd.read_parquet(out)
    assert df["valid"].all()
    assert df["student_score"].tolist() == [_score(s) + 0.5 for s in STUDENTS]
    meta = read_metadata(out)
    assert meta["judge_summary"]["score"] == pytest.approx(EXPECTED)
    assert meta["judge"]["api_key_env"] == "KDLM_TEST_JUDGE_KEY" and meta["model"] == "s__t/gt/fkl/seed0"

    assert main(argv) == 0  # rerun: every reply comes from the cache
    assert len(server.requests) == 6
    assert pd.read_parquet(out).equals(df)

    from kdlm.report import ReportConfig, write_report

    write_report([task["eval"]], tmp_path / "tables", ReportConfig(judge_files=[out], plots_dir=tmp_path / "plots"))
    summary = pd.read_parquet(tmp_path / "tables" / "summary.parquet").set_index("metric")
    assert summary.loc["judge", "value"] == pytest.approx(EXPECTED) and summary.loc["judge", "n"] == 3
    assert summary.loc["judge", "ci_low"] <= EXPECTED <= summary.loc["judge", "ci_high"]
    assert (tmp_path / "plots" / "scores_judge.png").exists()

    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name.endswith(".cache.parquet") for p in written)
    for path in written:
        assert KEY.encode() not in path.read_bytes(), path
    captured = capsys.readouterr()
    assert KEY not in captured.out + captured.err + caplog.text
    assert f"{EXPECTED:.3f}" in captured.out


def test_retries_500_429_drop_malformed_and_timeout(server, task, tmp_path, monkeypatch):
    monkeypatch.setenv("KDLM_TEST_JUDGE_KEY", KEY)
    server.plan.extend(["500", "429", "drop", "badjson", "slow"])
    summary = judge_evaluation(task["eval"], tmp_path / "j.parquet", _cfg(server, timeout=0.3), task["records"])
    assert summary["requests"] == 6 + 5 == len(server.requests)
    assert summary["retries"] == 5
    assert summary["score"] == pytest.approx(EXPECTED)


def test_unparsable_reply_is_counted_kept_and_left_out(server, task, tmp_path, monkeypatch):
    monkeypatch.setenv("KDLM_TEST_JUDGE_KEY", KEY)
    server.plan.append("garbage")
    out = tmp_path / "j.parquet"
    summary = judge_evaluation(task["eval"], out, _cfg(server), task["records"])
    assert (summary["unparsable_replies"], summary["valid"], summary["examples"], summary["requests"]) == (1, 2, 3, 6)
    df = pd.read_parquet(out)
    bad = df[~df["valid"]].iloc[0]
    assert "I cannot judge this." in (bad["reply_1"], bad["reply_2"])
    good = df[df["valid"]]
    assert summary["score"] == pytest.approx(good["student_score"].sum() / good["reference_score"].sum())


def test_gives_up_after_retries_keeps_replies_then_resumes(server, task, tmp_path, monkeypatch):
    monkeypatch.setenv("KDLM_TEST_JUDGE_KEY", KEY)
    server.plan.extend(["500"] * 3)  # one at a time: the first request fails its 1 + 2 attempts
    out = tmp_path / "j.parquet"
    with pytest.raises(JudgeError, match="1 of 6 judge request"):
        judge_evaluation(task["eval"], out, _cfg(server, max_retries=2, concurrency=1), task["records"])
    assert len(server.requests) == 3 + 5 and not out.exists()
    summary = judge_evaluation(task["eval"], out, _cfg(server, max_retries=2, concurrency=1), task["records"])
    assert summary["requests"] == 1  # only the failed pair is asked again
    assert summary["score"] == pytest.approx(EXPECTED)


def test_client_error_is_not_retried(server, task, tmp_path, monkeypatch):
    monkeypatch.setenv("KDLM_TEST_JUDGE_KEY", KEY)
    server.plan.append("401")
    with pytest.raises(JudgeError, match="HTTP 401"):
        judge_evaluation(task["eval"], tmp_path / "j.parquet", _cfg(server, concurrency=1), task["records"])
    assert len(server.requests) == 6  # the 401 once, the other five pairs answered


def test_config_errors(monkeypatch, tmp_path):
    monkeypatch.delenv("KDLM_UNSET_JUDGE_KEY", raising=False)
    with pytest.raises(ValueError, match="KDLM_UNSET_JUDGE_KEY"):
        JudgeConfig(base_url="http://127.0.0.1:1/v1", model="m", api_key_env="KDLM_UNSET_JUDGE_KEY").api_key()
    with pytest.raises(ValueError, match="concurrency"):
        JudgeConfig(base_url="http://127.0.0.1:1/v1", model="m", concurrency=0)
    with pytest.raises(ValueError, match="base_url"):
        JudgeConfig(base_url="127.0.0.1:1", model="m")
    assert JudgeConfig(base_url="http://h/v1", model="m", api_key_env=None).api_key() is None
