"""Grading a story completion with a judge model on Eldan & Li's four criteria (TinyStories, arXiv 2305.07759).

The protocol. The judge sees the story's opening and, after a ``***`` marker, the continuation a model wrote, and
grades the continuation from 1 to 10 on

- **Grammar**: spelling, grammar and punctuation;
- **Creativity**: fresh ideas, words and turns of events, for a story written for small children;
- **Consistency**: whether the continuation fits the opening (characters, setting, what already happened) and
  does not contradict itself;
- **Plot**: whether the events connect into a story that goes somewhere and comes to an end.

(The rubric is written here in our own words after the paper's description.) The judge is asked for a short
assessment, then one JSON object ``{"grammar": g, "creativity": c, "consistency": k, "plot": p}``. ``parse_grades``
takes the last such object in the answer (or, failing that, ``Grammar: 7``-style lines naming all four); any
other answer is *unparseable*. An unparseable answer or a failed request (timeout, connection or HTTP error) is
retried up to ``attempts`` times in all and then recorded as a failure with its reason: failures are counted in
every table, never dropped.

Judges are pluggable (``Judge``): ``OpenAIJudge`` speaks the chat-completions protocol of any OpenAI-compatible
endpoint (a GPT-4-class service, or a local vLLM / llama.cpp server: ``base_url`` + model name), ``HFJudge`` runs
a local HF causal LM (greedy, its chat template when it has one). ``Judge.name`` identifies the judge in the
grade cache, so grades of two judges never mix.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

from core.errors import ConfigError

CRITERIA = ("grammar", "creativity", "consistency", "plot")
RUBRIC_VERSION = 1  # part of every cache key: a changed rubric regrades

SYSTEM_PROMPT = (
    "You are a teacher grading short stories written by students for an audience of three-to-four-year-old "
    "children. Each story was started by the teacher; the student wrote the continuation that follows the "
    "'***' marker. Grade only the student's continuation, from 1 (very poor) to 10 (excellent), on four criteria:\n"
    "- grammar: spelling, grammar and punctuation;\n"
    "- creativity: fresh ideas, words and turns of events, for a story meant for small children;\n"
    "- consistency: whether the continuation fits the beginning (characters, setting, what already happened) "
    "and does not contradict itself;\n"
    "- plot: whether the events connect into a story that goes somewhere and comes to an end.\n"
    "A continuation that stops in the middle of a sentence is not penalised for stopping there."
)
ANSWER_FORMAT = (
    "First write your assessment in two to four sentences. Then, on the last line, write only a JSON object with "
    'integer grades, like {"grammar": 7, "creativity": 5, "consistency": 8, "plot": 6}.'
)


def judge_messages(opening: str, completion: str) -> list[dict]:
    story = f"{opening.rstrip()} *** {completion.strip()}"
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"The story:\n\n{story}\n\n{ANSWER_FORMAT}"}]


_JSON_OBJECT = re.compile(r"\{[^{}]*\}")


def _valid(grades: dict) -> dict[str, int] | None:
    out = {}
    for c in CRITERIA:
        v = grades.get(c)
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v.strip())
        # NaN and Infinity parse as JSON floats; the range test comes first so int() never sees them
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 1 <= v <= 10 or v != int(v):
            return None
        out[c] = int(v)
    return out


def parse_grades(answer: str) -> dict[str, int] | None:
    """The four integer grades (1-10) in a judge's answer, or None when the answer does not hold all four."""
    for candidate in reversed(_JSON_OBJECT.findall(answer or "")):
        try:
            obj = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            found = _valid({str(k).strip().lower(): v for k, v in obj.items()})
            if found is not None:
                return found
    lines = {}
    for c in CRITERIA:  # "Grammar: 7" / "grammar = 7/10", the last mention of each criterion
        hits = re.findall(rf"\b{c}\b\s*[:=]\s*(\d+)", answer or "", flags=re.IGNORECASE)
        if hits:
            lines[c] = int(hits[-1])
    return _valid(lines)


class JudgeRequestError(Exception):
    """One request to the judge failed (timeout, connection, HTTP error): the attempt counts, the grading goes on."""


class Judge:
    name: str

    def complete(self, messages: list[dict]) -> str:
        """The judge's answer to a chat; raises JudgeRequestError when the request fails."""
        raise NotImplementedError


class OpenAIJudge(Judge):
    """Any OpenAI-compatible chat-completions endpoint. The ``openai`` client retries nothing itself
    (``max_retries=0``): retries are the protocol's, so every request is counted."""

    def __init__(self, base_url: str | None, model: str, api_key: str | None = None, timeout: float = 60.0,
                 temperature: float = 0.0, max_tokens: int = 400):
        try:
            import openai
        except ImportError:
            raise ConfigError("the chat-completions judge needs the openai client: pip install openai") from None
        self._openai = openai
        self.model, self.temperature, self.max_tokens = model, temperature, max_tokens
        # A local server usually wants no key; the client insists on one, so an unset key becomes a placeholder.
        key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self.client = openai.OpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=0)
        self.name = f"openai:{model}@{base_url or 'api.openai.com'}"

    def complete(self, messages):
        try:
            reply = self.client.chat.completions.create(model=self.model, messages=messages,
                                                        temperature=self.temperature, max_tokens=self.max_tokens)
        except self._openai.APITimeoutError:
            raise JudgeRequestError("timeout") from None
        except self._openai.APIStatusError as e:
            raise JudgeRequestError(f"HTTP {e.status_code}") from None
        except self._openai.APIError as e:  # connection errors, malformed responses
            raise JudgeRequestError(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        if not reply.choices:
            raise JudgeRequestError("response without choices")
        return reply.choices[0].message.content or ""


class HFJudge(Judge):
    """A local HF causal LM as judge: greedy decoding of up to ``max_new_tokens``, its chat template if any."""

    def __init__(self, path: str, device: str = "cpu", max_new_tokens: int = 200):
        from model.export import load_model

        self.model, self.tokenizer = load_model(path)
        self.model.to(device)
        self.device, self.max_new_tokens = device, max_new_tokens
        self.name = f"hf:{path}"

    def prompt_ids(self, messages):
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)["input_ids"]
        text = "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages) + "Assistant:"
        return tok(text, return_tensors="pt")["input_ids"]

    def complete(self, messages):
        import torch

        ids = self.prompt_ids(messages).to(self.device)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit is not None and ids.shape[1] + self.max_new_tokens > limit:
            if limit <= self.max_new_tokens:
                raise ConfigError(f"judge {self.name}: {limit} positions leave no room for a prompt and "
                                  f"{self.max_new_tokens} answer tokens")
            ids = ids[:, -(limit - self.max_new_tokens):]  # keep the end: the story and the answer format
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.no_grad():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                      max_new_tokens=self.max_new_tokens, pad_token_id=pad)
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@dataclass
class Grading:
    """The outcome of grading one completion: ``grades`` (None when every attempt failed), the number of
    requests sent, the reason of the last failure, and the last answer received."""
    grades: dict[str, int] | None
    attempts: int
    error: str | None
    answer: str | None

    def to_dict(self) -> dict:
        return {"grades": self.grades, "attempts": self.attempts, "error": self.error, "answer": self.answer}


def grade(judge: Judge, opening: str, completion: str, attempts: int = 3) -> Grading:
    """Ask ``judge`` up to ``attempts`` times until an answer parses."""
    if attempts < 1:
        raise ConfigError(f"judge attempts must be >= 1, got {attempts}")
    messages = judge_messages(opening, completion)
    error, answer = None, None
    for n in range(1, attempts + 1):
        try:
            answer = judge.complete(messages)
        except JudgeRequestError as e:
            error = f"request failed: {e}"
            continue
        grades = parse_grades(answer)
        if grades is not None:
            return Grading(grades, n, None, answer)
        error = "unparseable answer"
    return Grading(None, attempts, error, answer)


def build_judge(url: str | None, model: str | None, hf_path: str | None, timeout: float = 60.0,
                device: str = "cpu") -> Judge | None:
    """The judge a command line names: ``--judge-url`` + ``--judge-model`` (chat completions), or ``--judge-hf``
    (a local HF model), or None (no grading)."""
    if hf_path and (url or model):
        raise ConfigError("give either --judge-hf or --judge-url/--judge-model, not both")
    if hf_path:
        return HFJudge(hf_path, device=device)
    if url or model:
        if not model:
            raise ConfigError("--judge-url needs --judge-model (the model name the endpoint serves)")
        return OpenAIJudge(url, model, timeout=timeout)
    return None
