"""Judged story generation: seeded sampling, the judge's answer parser, and the whole grading protocol against a
real chat-completions HTTP server on the loopback interface whose answers are this file's fixtures."""
from __future__ import annotations

import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from figures import legend

from analysis import judge as J
from analysis import stories as S

T_975_3 = 3.182446305284263  # Student-t 97.5% quantile, 3 degrees of freedom (tables)


def test_parse_grades():
    good = 'Fine story.\n{"grammar": 8, "creativity": 6, "consistency": 7, "plot": 5}'
    assert J.parse_grades(good) == {"grammar": 8, "creativity": 6, "consistency": 7, "plot": 5}
    two = '{"grammar": 1, "creativity": 1, "consistency": 1, "plot": 1} then {"Grammar": "9", "creativity": 9, ' \
          '"consistency": 9.0, "plot": 9}'
    assert J.parse_grades(two) == dict.fromkeys(J.CRITERIA, 9)  # the last object wins; "9", 9.0 are integers
    assert J.parse_grades("Grammar: 7/10\nCreativity: 6\nConsistency = 8\nPlot: 4") == {
        "grammar": 7, "creativity": 6, "consistency": 8, "plot": 4}
    for bad in ('{"grammar": 8, "creativity": 6, "consistency": 7}', '{"grammar": 11, "creativity": 6, '
                '"consistency": 7, "plot": 5}', '{"grammar": 7.5, "creativity": 6, "consistency": 7, "plot": 5}',
                '{"grammar": NaN, "creativity": 6, "consistency": 7, "plot": 5}',  # JSON that int() cannot take
                '{"grammar": Infinity, "creativity": 6, "consistency": 7, "plot": 5}',
                "I liked it!", "", None):
        assert J.parse_grades(bad) is None, bad


def test_generation_is_deterministic_under_seed(tiny_hf_model_dir, tinystories_valid):
    from model.export import load_model

    model, tok = load_model(tiny_hf_model_dir)
    stories, _ = S.read_stories(str(tinystories_valid), None)
    prompts = S.story_openings(stories[:20], 3, 10)
    assert all(len(p.opening.split()) == 10 and stories[p.id].startswith(p.opening) for p in prompts)
    cfg = S.SamplingConfig(max_new_tokens=12, seed=3)
    first, again = S.generate(model, tok, prompts, cfg), S.generate(model, tok, prompts, cfg)
    assert first == again and len(set(first)) == 3
    assert S.generate(model, tok, prompts[2:], cfg) == first[2:]  # a prompt's sample does not depend on the others
    other = S.generate(model, tok, prompts, S.SamplingConfig(max_new_tokens=12, seed=4))
    assert other != first


# -- a chat-completions server with fixture answers ----------------------------------------------------------------

SLOW_S, TIMEOUT_S = 1.5, 0.4


class FixtureJudge(BaseHTTPRequestHandler):
    """Answers by a marker in the story: GRADES=g,c,k,p -> those grades; MALFORMED -> prose without grades;
    SLOW -> answers after the client has timed out; FLAKY -> malformed on the first request, then GRADES."""
    counts: dict[str, int]
    lock = threading.Lock()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        story = body["messages"][-1]["content"]
        marker = re.search(r"(MALFORMED|SLOW|FLAKY|GRADES=[\d,]+)", story).group(1)
        with self.lock:
            self.counts[marker] = self.counts.get(marker, 0) + 1
            n = self.counts[marker]
        if marker == "SLOW":
            time.sleep(SLOW_S)
        if marker in ("MALFORMED", "SLOW") or (marker == "FLAKY" and n == 1):
            content = "What a lovely story, I would give it high marks!"
        else:
            grades = re.search(r"GRADES=([\d,]+)", story).group(1) if marker != "FLAKY" else "5,5,5,5"
            g = dict(zip(J.CRITERIA, map(int, grades.split(","))))
            content = f"The story is simple but coherent.\n{json.dumps(g)}"
        reply = {"id": "fixture", "object": "chat.completion", "created": 0, "model": body["model"],
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                              "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        data = json.dumps(reply).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up on a slow answer
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_server():
    handler = type("Handler", (FixtureJudge,), {"counts": {}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", handler.counts
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


STORIES = ["Once upon a time there was a cat named Tom who liked the sun. GRADES=8,6,7,5 He slept all day.",
           "One day a little girl named Lily went to the park with her mom. GRADES=6,4,9,7 They played ball.",
           "There was a big red ball in the garden of an old house by the sea. GRADES=10,8,8,6 A dog found it.",
           "Sam had a small boat that he loved to sail on the blue pond near home. MALFORMED It sank.",
           "The sun was shining and the birds were singing in the tall green trees. SLOW Then it rained.",
           "Mia found a shiny key under her bed one morning when she woke up early. FLAKY It opened a box."]


def test_judge_protocol_against_a_local_server(judge_server, tmp_path, saved_figures):
    url, counts = judge_server
    prompts_file = tmp_path / "stories.txt"
    prompts_file.write_text("".join(f"{s}\n<|endoftext|>\n" for s in STORIES))
    out = tmp_path / "out"
    argv = ["--reference", "--prompts", str(prompts_file), "--num-prompts", "6", "--opening-words", "10",
            "--out", str(out), "--judge-url", url, "--judge-model", "fixture-judge", "--judge-timeout", str(TIMEOUT_S),
            "--judge-attempts", "2"]
    assert S.main(argv) == 0
    # bounded requests: one per good answer, `attempts` per failing one, the flaky one succeeds on its retry
    assert counts == {"GRADES=8,6,7,5": 1, "GRADES=6,4,9,7": 1, "GRADES=10,8,8,6": 1, "MALFORMED": 2, "SLOW": 2,
                      "FLAKY": 2}
    res = json.loads((out / "stories.json").read_text())["results"]["reference"]
    assert (res["n"], res["failed"]) == (4, 2)
    assert res["failure_reasons"] == ["request failed: timeout", "unparseable answer"]
    graded = [(8, 6, 7, 5), (6, 4, 9, 7), (10, 8, 8, 6), (5, 5, 5, 5)]  # the fixtures, by hand
    for c, col in zip(J.CRITERIA, zip(*graded)):
        mean = sum(col) / 4
        sd = (sum((v - mean) ** 2 for v in col) / 3) ** 0.5
        assert res[c]["mean"] == pytest.approx(mean)
        assert res[c]["ci95"] == pytest.approx(T_975_3 * sd / 2)
    assert res["mean"]["mean"] == pytest.approx((6.5 + 6.5 + 8 + 5) / 4)
    table = (out / "stories.md").read_text()
    assert "| reference | 7.25 ± " in table and "| 4 | 2 |" in table
    [ax] = saved_figures["stories.png"].axes  # one bar per column, the means by hand, the ci95 as error bars
    assert (out / "stories.png").is_file() and ax.get_ylabel() == "grade (1-10), 95% interval over prompts"
    assert [t.get_text() for t in ax.get_xticklabels()] == list(S.COLUMNS) and legend(ax) == ["reference"]
    assert [b.get_height() for b in ax.patches] == pytest.approx(
        [sum(col) / 4 for col in zip(*graded)] + [(6.5 + 6.5 + 8 + 5) / 4])
    grades = [json.loads(line) for line in (out / "grades.jsonl").read_text().splitlines()]
    assert len(grades) == 6 and sum(g["grades"] is None for g in grades) == 2

    # A rerun asks only for what is missing: the two failures, again with bounded attempts.
    before = dict(counts)
    assert S.main(argv) == 0
    assert {k: counts[k] - before[k] for k in counts} == {
        "GRADES=8,6,7,5": 0, "GRADES=6,4,9,7": 0, "GRADES=10,8,8,6": 0, "MALFORMED": 2, "SLOW": 2, "FLAKY": 0}
    assert json.loads((out / "stories.json").read_text())["results"]["reference"]["n"] == 4


def test_generations_are_cached(tiny_hf_model_dir, tmp_path, monkeypatch):
    prompts_file = tmp_path / "stories.txt"
    prompts_file.write_text("".join(f"{s}\n<|endoftext|>\n" for s in STORIES[:3]))
    argv = ["--model", str(tiny_hf_model_dir), "--prompts", str(prompts_file), "--num-prompts", "3",
            "--opening-words", "10", "--max-new-tokens", "8", "--out", str(tmp_path / "out")]
    assert S.main(argv) == 0
    lines = (tmp_path / "out" / "generations.jsonl").read_text().splitlines()
    assert len(lines) == 3
    monkeypatch.setattr(S, "generate", lambda *a, **k: pytest.fail("cached generations were regenerated"))
    assert S.main(argv) == 0
    assert (tmp_path / "out" / "generations.jsonl").read_text().splitlines() == lines


def test_hf_judge_garbage_is_counted_not_dropped(tiny_hf_model_dir):
    judge = J.HFJudge(str(tiny_hf_model_dir), max_new_tokens=8)
    gen = {"key": "k1", "model": "m", "prompt_id": 0, "opening": "Once upon a time", "completion": "there was a cat."}
    recs = S.ensure_grades(_MemoryCache(), [gen], judge, attempts=2)
    summary = S.summarize(recs)
    assert (summary["n"], summary["failed"]) == (0, 1) and recs[0]["attempts"] == 2


class _MemoryCache(S.ResultCache):
    def __init__(self):
        self.records = {}

    def add(self, record):
        self.records[record["key"]] = record
        return record


def test_openai_missing_is_one_clear_error(monkeypatch):
    from core.errors import ConfigError

    monkeypatch.setitem(sys.modules, "openai", None)
    with pytest.raises(ConfigError, match="pip install openai"):
        J.OpenAIJudge("http://127.0.0.1:9/v1", "m")
