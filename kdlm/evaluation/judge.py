"""`kdlm judge`: an LLM judge scores each answer against the task's reference answer, as in the paper.

The paper's judge (after Vicuna's pairwise review) shows the question, the student's answer as Assistant 1
and the reference answer as Assistant 2, and asks for two scores from 1 to 10; a task's score is
Σ student / Σ reference. We differ from the reference code where it is wrong: the prompt has the
newlines it forgot before each answer block, and each pair is asked in both orders and the scores are
averaged, which cancels the judge's position bias.

Any OpenAI-compatible chat-completions server works (`base_url`, `model`). The API key is read from the
environment variable *named* in the config and is never written to a log, a config dump or an output.
Requests run with bounded concurrency and retry with exponential backoff on 429, 5xx, timeouts and
dropped connections. Every reply is cached in parquet keyed by (judge model, question, answer 1,
answer 2), so a rerun, or a run resumed after a failure, asks only what it has not asked before.
Replies without two scores are kept, counted and reported, never silently dropped.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import pandas as pd
import pyarrow as pa

from kdlm.io import atomic_path
from kdlm.schemas import EVAL, RECORDS, read_metadata, read_table, write_table

log = logging.getLogger(__name__)

SYSTEM_PROMPT = "You are a helpful and precise assistant for checking the quality of the answer."
REVIEW_PROMPT = (
    "[Question]\n{question}\n\n"
    "[The Start of Assistant 1's Answer]\n{answer_1}\n\n[The End of Assistant 1's Answer]\n\n"
    "[The Start of Assistant 2's Answer]\n{answer_2}\n\n[The End of Assistant 2's Answer]\n\n"
    "[System]\n"
    "We would like to request your feedback on the performance of two AI assistants in response to the "
    "user question displayed above.\n"
    "Please rate the helpfulness, relevance, accuracy, level of details of their responses. Each assistant "
    "receives an overall score on a scale of 1 to 10, where a higher score indicates better overall "
    "performance.\n"
    "Please first output a single line containing only two values indicating the scores for Assistant 1 "
    "and 2, respectively. The two scores are separated by a space. In the subsequent line, please provide "
    "a comprehensive explanation of your evaluation, avoiding any potential bias and ensuring that the "
    "order in which the responses were presented does not affect your judgment.\n"
)
_SCORES = re.compile(r"^\s*\**\s*(\d+(?:\.\d+)?)\s*(?:[\s,/]|and)\s*(\d+(?:\.\d+)?)")
CACHE_COLUMNS = ["key", "judge_model", "question", "answer_1", "answer_2", "reply"]
_SCORE, _TEXT = pa.float64(), pa.string()
# results/judge/{model}/{task}.parquet: per example, the scores of each order (1: student = Assistant 1,
# 2: swapped), their mean where every order parsed (`valid`), and the replies themselves.
JUDGE = pa.schema(
    [("id", _TEXT), ("question", _TEXT), ("student_1", _SCORE), ("reference_1", _SCORE), ("student_2", _SCORE),
     ("reference_2", _SCORE), ("reply_1", _TEXT), ("reply_2", _TEXT), ("valid", pa.bool_()),
     ("student_score", _SCORE), ("reference_score", _SCORE)]
)  # fmt: skip


class JudgeError(RuntimeError):
    """The judge server could not answer (after retries) or refused the request."""


@dataclass
class JudgeConfig:
    """How to reach the judge and how hard to try."""

    base_url: str  # e.g. http://127.0.0.1:8000/v1 (".../chat/completions" is appended)
    model: str  # the judge model's name on that server
    api_key_env: str | None = "OPENAI_API_KEY"  # NAME of the environment variable holding the key; None: no key
    concurrency: int = 4  # requests in flight at once
    max_retries: int = 5  # retries per request after the first attempt
    timeout: float = 120.0  # seconds per request
    backoff: float = 1.0  # first retry delay in seconds, doubled each retry
    max_backoff: float = 60.0  # cap on one delay (also on a server's Retry-After)
    temperature: float = 0.0
    max_tokens: int = 512
    both_orders: bool = True  # ask with the answers swapped too and average (cancels position bias)

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        if not self.model:
            raise ValueError("model must name the judge model")
        for name in ("concurrency",):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_retries", "backoff", "max_backoff"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {self.timeout}")

    def api_key(self) -> str | None:
        """The key from the environment; raises ValueError naming the variable (never the value)."""
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ValueError(f"environment variable {self.api_key_env!r} (evaluation.judge.api_key_env) is not set")
        return key

    def describe(self) -> dict:
        """The settings safe to store: the key's variable name, never the key."""
        return asdict(self)


def review_prompt(question: str, answer_1: str, answer_2: str) -> str:
    return REVIEW_PROMPT.format(question=question, answer_1=answer_1, answer_2=answer_2)


def parse_scores(reply: str) -> tuple[float, float] | None:
    """(score of Assistant 1, score of Assistant 2) from the reply's first line; None if it has no two
    scores in [0, 10]."""
    lines = [line for line in reply.strip().splitlines() if line.strip()]
    match = _SCORES.match(lines[0]) if lines else None
    if not match:
        return None
    scores = float(match[1]), float(match[2])
    return scores if all(0 <= s <= 10 for s in scores) else None


def cache_key(judge_model: str, question: str, answer_1: str, answer_2: str) -> str:
    return hashlib.sha256(json.dumps([judge_model, question, answer_1, answer_2]).encode()).hexdigest()


class ReplyCache:
    """Judge replies in a parquet file, keyed by (judge model, question, answer 1, answer 2)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.rows: dict[str, dict] = {}
        if self.path.exists():
            for row in pd.read_parquet(self.path).to_dict("records"):
                self.rows[row["key"]] = row
        self._dirty = False

    def get(self, key: str) -> str | None:
        row = self.rows.get(key)
        return None if row is None else row["reply"]

    def put(self, judge_model: str, question: str, answer_1: str, answer_2: str, reply: str) -> None:
        key = cache_key(judge_model, question, answer_1, answer_2)
        self.rows[key] = dict(zip(CACHE_COLUMNS, [key, judge_model, question, answer_1, answer_2, reply], strict=True))
        self._dirty = True

    def save(self) -> None:
        if not self._dirty:
            return
        with atomic_path(self.path) as tmp:
            pd.DataFrame(list(self.rows.values()), columns=CACHE_COLUMNS).to_parquet(tmp, index=False)
        self._dirty = False


class JudgeClient:
    """Chat-completions requests with bounded concurrency and retries (429, 5xx, timeouts, drops)."""

    RETRY_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))

    def __init__(self, cfg: JudgeConfig) -> None:
        self.cfg = cfg
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self._key = cfg.api_key()
        self.requests = 0  # attempts made, for the log
        self.retries = 0

    async def ask_all(self, prompts: list[str], on_reply) -> list[BaseException | None]:
        """Ask every prompt; `on_reply(i, text)` is called as each reply arrives. Returns the error of
        each prompt that failed for good (None where it succeeded)."""

        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        semaphore = asyncio.Semaphore(self.cfg.concurrency)
        limits = httpx.Limits(max_connections=self.cfg.concurrency)
        async with httpx.AsyncClient(headers=headers, timeout=self.cfg.timeout, limits=limits) as client:

            async def one(i: int, prompt: str) -> BaseException | None:
                async with semaphore:
                    try:
                        on_reply(i, await self._ask(client, prompt))
                        return None
                    except JudgeError as err:
                        return err

            return await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))

    async def _ask(self, client, prompt: str) -> str:
        body = {
            "model": self.cfg.model,
            "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}],
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_tokens,
        }
        last = "no attempt"
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                self.retries += 1
            self.requests += 1
            retry_after = None
            try:
                response = await client.post(self.url, json=body)
            except (httpx.TimeoutException, httpx.TransportError) as err:
                last = f"{type(err).__name__}: {err}"
            else:
                if response.status_code == 200:
                    try:
                        return response.json()["choices"][0]["message"]["content"] or ""
                    except (ValueError, KeyError, IndexError, TypeError) as err:
                        last = f"malformed response body ({type(err).__name__}): {response.text[:200]!r}"
                elif response.status_code in self.RETRY_STATUS:
                    last = f"HTTP {response.status_code}: {response.text[:200]!r}"
                    retry_after = _retry_after(response.headers.get("retry-after"))
                else:
                    raise JudgeError(f"{self.url}: HTTP {response.status_code}: {response.text[:500]!r}")
            if attempt < self.cfg.max_retries:
                delay = retry_after if retry_after is not None else self.cfg.backoff * 2**attempt
                delay = min(delay, self.cfg.max_backoff)
                log.warning("judge request failed (%s); retry %d/%d in %.2f s", last, attempt + 1,
                            self.cfg.max_retries, delay)  # fmt: skip
                await asyncio.sleep(delay)
        raise JudgeError(f"{self.url}: gave up after {self.cfg.max_retries + 1} attempts; last error: {last}")


def _retry_after(value: str | None) -> float | None:
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:
        return None


def _questions(evaluation, records) -> list[str]:
    """The user's question of each example: the record's instruction (and input), else the eval prompt."""
    if records is None:
        return evaluation["prompt"].tolist()
    by_id = {r.id: (r.instruction + ("\n\n" + r.input if r.input else "")) for r in records.itertuples()}
    missing = [i for i in evaluation["id"] if i not in by_id]
    if missing:
        raise ValueError(f"{len(missing)} evaluated example id(s) not in the records, e.g. {missing[0]!r}")
    return [by_id[i] for i in evaluation["id"]]


def judge_evaluation(
    eval_path: Path, out: Path, cfg: JudgeConfig, records_path: Path | None = None, cache_path: Path | None = None
) -> dict:
    """Judge every answer of one evaluation file against its reference; write the per-example parquet.

    Args:
        records_path: the task's records parquet, for the plain question (instruction + input).
        cache_path: the reply cache (default: `<out>.cache.parquet`), kept across reruns.

    Returns:
        Summary: score (Σ student / Σ reference over examples whose replies all parsed), examples,
        valid, unparsable replies, requests made.

    Raises:
        JudgeError: when some request failed for good; replies received so far stay cached.
    """

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    evaluation = read_table(eval_path, EVAL)
    records = read_table(records_path, RECORDS) if records_path is not None else None
    questions = _questions(evaluation, records)
    students = evaluation["prediction"].fillna("").tolist()
    references = evaluation["reference"].fillna("").tolist()
    orders = [(False,), (False, True)][cfg.both_orders]  # swapped: reference = Assistant 1
    pairs = []  # (example, swapped, answer_1, answer_2)
    for i, (student, reference) in enumerate(zip(students, references, strict=True)):
        for swapped in orders:
            pairs.append((i, swapped, reference if swapped else student, student if swapped else reference))
    cache = ReplyCache(cache_path or Path(f"{out}.cache.parquet"))
    replies: dict[int, str] = {}
    todo = []
    for j, (i, _, a1, a2) in enumerate(pairs):
        cached = cache.get(cache_key(cfg.model, questions[i], a1, a2))
        if cached is None:
            todo.append(j)
        else:
            replies[j] = cached
    client = JudgeClient(cfg) if todo else None
    log.info("judge %s: %d pairs, %d cached, %d to ask %s", eval_path, len(pairs), len(pairs) - len(todo), len(todo),
             cfg.model)  # fmt: skip
    errors: list = []
    if todo:

        def on_reply(k: int, text: str) -> None:
            j = todo[k]
            i, _, a1, a2 = pairs[j]
            replies[j] = text
            cache.put(cfg.model, questions[i], a1, a2, text)

        prompts = [review_prompt(questions[pairs[j][0]], pairs[j][2], pairs[j][3]) for j in todo]
        try:
            errors = [e for e in asyncio.run(client.ask_all(prompts, on_reply)) if e is not None]
        finally:
            cache.save()
    if errors:
        raise JudgeError(f"{len(errors)} of {len(todo)} judge request(s) failed; first: {errors[0]}")
    cache.save()

    columns: dict[str, list] = {"student_1": [], "reference_1": [], "student_2": [], "reference_2": [],
                                "reply_1": [], "reply_2": []}  # fmt: skip
    parsed = {j: parse_scores(replies[j]) for j in replies}
    slot = {(i, swapped): j for j, (i, swapped, _, _) in enumerate(pairs)}
    for i in range(len(students)):
        for n, swapped in enumerate((False, True), start=1):
            j = slot.get((i, swapped))
            scores = parsed.get(j) if j is not None else None
            student, reference = (None, None) if scores is None else (scores[::-1] if swapped else scores)
            columns[f"student_{n}"].append(student)
            columns[f"reference_{n}"].append(reference)
            columns[f"reply_{n}"].append(replies.get(j) if j is not None else None)
    df = pd.DataFrame({"id": evaluation["id"].values, "question": questions, **columns})
    asked = [f"_{n}" for n, swapped in enumerate((False, True), start=1) if swapped in orders]
    df["valid"] = df[[f"student{s}" for s in asked]].notna().all(axis=1)
    df["student_score"] = df[[f"student{s}" for s in asked]].mean(axis=1).where(df["valid"])
    df["reference_score"] = df[[f"reference{s}" for s in asked]].mean(axis=1).where(df["valid"])
    valid = df[df["valid"]]
    total_ref = valid["reference_score"].sum()
    summary = {
        "score": float(valid["student_score"].sum() / total_ref) if total_ref > 0 else float("nan"),
        "examples": len(df),
        "valid": int(df["valid"].sum()),
        "unparsable_replies": sum(1 for p in parsed.values() if p is None),
        "requests": client.requests if client else 0,
        "retries": client.retries if client else 0,
    }
    if summary["unparsable_replies"]:
        log.warning("judge %s: %d unparsable repl(ies); %d of %d examples left out of the score", eval_path,
                    summary["unparsable_replies"], len(df) - summary["valid"], len(df))  # fmt: skip
    meta = {**read_metadata(eval_path), "judge": cfg.describe(), "judge_summary": summary}
    write_table(df, out, JUDGE, metadata=meta)
    return summary
