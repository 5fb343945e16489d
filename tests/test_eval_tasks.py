"""Benchmark tasks: prompts equal lm-evaluation-harness's, and the original files map onto HF's rows.

The golden prompts below were produced by lm-evaluation-harness 0.4.13 itself (its super_glue / xstorycloze task
YAMLs and utils, fed the documents our loaders produce; bench/eval_lme_parity.py). No model is needed here.
"""
from __future__ import annotations

import json
import shutil

import pytest

from eval.benchmarks.tasks import GROUPS, TASKS, DataSource, TaskDataError, expand_task_names, get_task
from eval.benchmarks.tasks.superglue import fix_wsc_spans

GOLDEN = {  # task: (doc index in the validation split, context, continuations, gold) -- produced by lme 0.4.13
    'boolq': (106, "Gambling in Australia -- Gamblers' winnings in Australia are not taxed . There are 3 main reasons for that:\nQuestion: do you pay tax on gambling winnings in australia?\nAnswer:",
        [' no', ' yes'], 0),
    'cb': (14, "A: Your turn. B: Okay. Uh, I don't think they should abolish it.\nQuestion: they should abolish it. True, False, or Neither?\nAnswer:",
        [' True', ' False', ' Neither'], 1),
    'copa': (32, 'I coughed because',
        ['  i inhaled smoke.', '  i lowered my voice.'], 0),
    'multirc': (4, 'What causes a change in motion? The application of a force. Any time an object changes motion, a force has been applied. In what ways can this happen? Force can cause an object at rest to start moving. Forces can cause objects to speed up or slow down. Forces can cause a moving object to stop. Forces can also cause a change in direction. In short, forces cause changes in motion. The moving object may change its speed, its direction, or both. We know that changes in motion require a force. We know that the size of the force determines the change in motion. How much an objects motion changes when a force is applied depends on two things. It depends on the strength of the force. It also depends on the objects mass. Think about some simple tasks you may regularly do. You may pick up a baseball. This requires only a very small force. \nQuestion: What do you apply to an object to make it move or stop?\nAnswer:',
        [' Strength\nIs the answer correct? yes', ' Strength\nIs the answer correct? no'], 0),
    'record': (10, 'Serena Williams was given the worst beating of her Grand Slam career in a sensational upset at the French Open today when she was beaten 6-2, 6-2 by 20 year-old Garbine Muguruza. The six-feet tall world No 35, of Spanish and Venezuelan heritage, took advantage of windy and cold conditions to blow away the top seed in the second round and keep the shocks coming at Roland Garros. The women’s draw has been blown wide open as, for the first time in the Open era, the top two seeds are out before the third round following Li Na’s early demise.\n\n  - No 1 seed Serena defeated 6-2, 6-2 by Garbine Muguruza.\n  - Venus beaten 2-6, 6-3, 6-4 by Anna Schmiedlova.\n  - Williams sisters were due to meet in third round at Roland Garros.\n',
        ['   - Flying start: Anna Schmiedlova seemed to be cruising towards victory when she took the first set with minimal fuss', '   - Flying start: French Open seemed to be cruising towards victory when she took the first set with minimal fuss', '   - Flying start: Garbine Muguruza seemed to be cruising towards victory when she took the first set with minimal fuss', '   - Flying start: Grand Slam seemed to be cruising towards victory when she took the first set with minimal fuss', '   - Flying start: Li Na seemed to be cruising towards victory when she took the first set with minimal fuss', '   - Flying start: Open seemed to be cruising towards victory when she took the first set with minimal fuss', '   - Flying start: Roland Garros seemed to be cruising towards victory when she took the first set with minimal fuss', '   - Flying start: Serena seemed to be cruising towards victory when she took the first set with minimal fuss', '   - Flying start: Serena Williams seemed to be cruising towards victory when she took the first set with minimal fuss', '   - Flying start: Spanish seemed to be cruising towards victory when she took the first set with minimal fuss', '   - Flying start: Venezuelan seemed to be cruising towards victory when she took the first set with minimal fuss', '   - Flying start: Venus seemed to be cruising towards victory when she took the first set with minimal fuss', '   - Flying start: Williams seemed to be cruising towards victory when she took the first set with minimal fuss'], 11),
    'rte': (197, 'Capital punishment acts as a deterrent.\nQuestion: Capital punishment is a deterrent to crime. True or False?\nAnswer:',
        [' True', ' False'], 0),
    'wic': (144, "Sentence 1: Stop a car.\nSentence 2: Stop the thief.\nQuestion: Is the word 'Stop' used in the same way in the two sentences above?\nAnswer:",
        [' no', ' yes'], 1),
    'wsc': (10, 'Passage: Jane gave Joan candy because *she* was hungry.\nQuestion: In the passage above, does the pronoun "*she*" refer to "*Jane*"?\nAnswer:',
        [' no', ' yes'], 0),
    'xstorycloze_en': (160, 'Tom bought a new plant. He kept it by his bed. The plant stopped growing. His mother said it needed sunlight.',
        [' So Tom moved the plant to a window.', ' Tom closed his windows to block out as much sunlight as possible.'], 0),
    'xstorycloze_zh': (147, '托德和阿什利在约会。 托德生阿什利的气。 他不理她。 阿什利很烦恼。',
        [' 她生气是因为托德喋喋不休。', ' 她也决定不理托德。'], 1),
}

# 2-shot COPA contexts of validation documents 0 and 1 (lme 0.4.13, seed 1234, FewGLUE train as the pool). lme draws
# k + 1 shots and keeps the first k, so document 1's shots differ from a plain rnd.sample(pool, k) sequence.
COPA_2SHOT = [
    "The spy discovered the enemy's location because  the spy bugged the enemy's phone.\n\nThe inside of the train "
    "went dark because  the train travelled through a tunnel.\n\nThe man turned on the faucet therefore",
    "My friend paid for my ticket therefore  i paid her back.\n\nThe archeologist dug up the site therefore  she "
    "excavated ancient artifacts.\n\nThe girl found a bug in her cereal therefore",
]


@pytest.fixture(scope="module")
def data(shared_data):
    return DataSource(shared_data)


@pytest.mark.parametrize("name", list(GOLDEN))
def test_prompts_equal_lme(name, data):
    doc_id, context, continuations, gold = GOLDEN[name]
    task = get_task(name, data)
    inst = task.build_instances(limit=doc_id + 1)[doc_id]
    assert inst.doc_id == doc_id
    assert inst.requests == [(context, c) for c in continuations]
    assert inst.gold == gold


def test_fewshot_contexts_equal_lme(data):
    insts = get_task("copa", data).build_instances(limit=2, num_fewshot=2, seed=1234)
    assert [i.context for i in insts] == COPA_2SHOT
    again = get_task("copa", data).build_instances(limit=2, num_fewshot=2, seed=1234)
    assert [i.context for i in again] == COPA_2SHOT  # seeded: reproducible
    other = get_task("copa", data).build_instances(limit=2, num_fewshot=2, seed=7)
    assert [i.context for i in other] != COPA_2SHOT
    with pytest.raises(ValueError, match="32 training examples|more than 32"):
        get_task("copa", data).build_instances(limit=1, num_fewshot=32)


def test_multirc_flattening_and_lme_label_oddity(data):
    docs = get_task("multirc", data).docs("validation")
    assert len(docs) == 4848  # 83 passages, 953 questions, 4848 answers
    assert docs[0]["answer"] == "No" and docs[0]["label"] == 0 and docs[1]["label"] == 1
    assert docs[1]["idx"] == {"paragraph": 0, "question": 0, "answer": 1}
    # lme: choices [... yes, ... no] with gold = label, so a correct answer (label 1) has "no" as its gold choice
    inst = get_task("multirc", data).build_instances(limit=2)[1]
    assert inst.choices[inst.gold].endswith("Is the answer correct? no")
    fixed = get_task("multirc_fixed", data).build_instances(limit=2)[1]
    assert fixed.choices[fixed.gold].endswith("Is the answer correct? yes")
    assert "multirc_fixed" not in GROUPS["superglue"]


def test_record_mapping_and_dev32_fallback(data, caplog):
    task = get_task("record", data)
    docs = task.docs("validation")
    assert task.split_tag == "dev32" and task.logged_name() == "record_dev32"
    assert task.logged_name(100) == "record_dev32_first100"
    assert any("dev32.jsonl" in n and "record_dev32" in n for n in task.notes)
    assert len(docs) == 32
    raw = json.loads((data.root / "superglue/ReCoRD/dev32.jsonl").read_text().splitlines()[0])
    text = raw["passage"]["text"]
    # entity spans are end-inclusive; entities and answers are sorted unique strings; @highlight stays in the text
    assert docs[0]["passage"] == text and "\n@highlight\n" in text
    assert docs[0]["entities"] == sorted({text[e["start"]:e["end"] + 1] for e in raw["passage"]["entities"]})
    assert "Islamabad" in docs[0]["entities"] and "Benazir Bhutto" in docs[0]["entities"]
    assert docs[0]["answers"] == ["Benazir Bhutto", "Bhutto"]
    assert "@placeholder" in docs[0]["query"]
    assert docs[0]["idx"] == {"passage": raw["idx"], "query": raw["qas"][0]["idx"]}


def test_record_prefers_validation_file(data, tmp_path):
    root = tmp_path / "data"
    (root / "superglue" / "ReCoRD").mkdir(parents=True)
    shutil.copy(data.root / "superglue/ReCoRD/dev32.jsonl", root / "superglue/ReCoRD/val.jsonl")
    task = get_task("record", DataSource(root))
    assert len(task.docs("validation")) == 32 and task.logged_name() == "record" and not task.notes


def test_label_mappings(data):
    cb = get_task("cb", data).docs("validation")
    assert cb[0]["label"] == 1  # "contradiction" -> 1 (entailment 0, contradiction 1, neutral 2)
    assert cb[1]["label"] == 2
    rte = get_task("rte", data).docs("validation")
    assert rte[0]["label"] == 1 and rte[1]["label"] == 0  # not_entailment -> 1
    boolq = get_task("boolq", data).docs("validation")
    assert {d["label"] for d in boolq} == {0, 1} and len(boolq) == 3270
    copa = get_task("copa", data).docs("validation")
    assert [d["label"] for d in copa[:3]] == [1, 1, 0]
    wic = get_task("wic", data).docs("validation")
    assert wic[0]["sentence1"][wic[0]["start1"]:wic[0]["end1"]] == "class" and wic[0]["label"] == 0


def test_wsc_fixed_spans(data):
    docs = get_task("wsc", data).docs("validation")
    assert len(docs) == 104
    assert docs[5]["span1_text"] == "the table"  # "The table" is not in the text: HF's wsc.fixed lower-cases it
    for d in docs:
        assert d["span2_text"] in d["text"]
    ex = {"text": "Kamenev and Stalin and Zinoviev met.", "span1_index": 0, "span2_index": 4,
          "span1_text": "Kamenev and Zinoviev", "span2_text": "Zinoviev."}
    fixed = fix_wsc_spans(dict(ex))
    assert fixed["span1_text"] == "Kamenev and Zinoviev"  # left alone (intervening text)
    assert fixed["span2_text"] == "Zinoviev"  # trailing period removed


def test_xstorycloze_parsed_like_hf(data):
    eu = get_task("xstorycloze_eu", data).docs("validation")
    assert len(eu) == 1511 and len(get_task("xstorycloze_eu", data).docs("train")) == 360
    # QUOTE_ALL + skipinitialspace: the quotes around the title are consumed as csv quoting, as HF's loader does
    assert eu[360]["input_sentence_1"] == "Buffy banpiro-ehiztaria seriearen maratoi bat egiten hasi nintzen."
    ru = get_task("xstorycloze_ru", data).docs("validation")
    assert ru[1201]["input_sentence_1"] == "В этом году Бен хотел выиграть конкурс костюмов на работе."
    assert {d["answer_right_ending"] for d in eu} == {1, 2}
    assert [d["story_id"] for d in eu[:50]] == [d["story_id"] for d in get_task("xstorycloze_en", data).docs(
        "validation")[:50]]


def test_missing_data_names_task_and_path(tmp_path):
    with pytest.raises(TaskDataError, match=r"task 'boolq'.*superglue/BoolQ/val.jsonl"):
        get_task("boolq", DataSource(tmp_path)).build_instances()
    with pytest.raises(TaskDataError, match=r"task 'xstorycloze_sw'.*spring2016.val.sw.tsv.split_20_80_eval.tsv"):
        get_task("xstorycloze_sw", DataSource(tmp_path)).build_instances()
    with pytest.raises(TaskDataError, match=r"task 'record'.*ReCoRD/val.jsonl.*dev32"):
        get_task("record", DataSource(tmp_path)).docs("validation")
    with pytest.raises(TaskDataError, match=r"task 'tinystories'.*tinystories/valid.txt"):
        get_task("tinystories", DataSource(tmp_path)).documents()


def test_hub_unreachable_names_dataset(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(TaskDataError, match=r"task 'cb'.*aps/super_glue/cb split 'validation'"):
        get_task("cb", DataSource(None)).docs("validation")


def test_registry():
    assert expand_task_names("superglue") == ["boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc"]
    assert len(expand_task_names("xstorycloze")) == 11
    assert expand_task_names("cb,superglue,tinystories")[:2] == ["cb", "boolq"]  # order kept, no duplicates
    assert len(expand_task_names(["superglue", "xstorycloze", "tinystories"])) == 20
    with pytest.raises(ValueError, match="did you mean 'boolq'"):
        expand_task_names("boolk")
    assert all(n in TASKS for g in GROUPS.values() for n in g)
    assert DataSource.resolve(None).root is None or DataSource.resolve(None).root.name
