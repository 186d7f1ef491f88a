import json

import pytest

from cap_edge.errors import TaskError
from cap_edge.tasks import FAMILIES, Problem, calibration_problems, check_disjoint, load_split, read_jsonl


def test_at_least_six_families_with_levels_and_forms():
    assert len(FAMILIES) >= 6
    probs = load_split("embedded", "eval", 6)
    for fam in FAMILIES:
        ps = [p for p in probs if p.family == fam]
        assert {p.difficulty for p in ps} == {1, 2, 3}
        assert all(p.choices and p.answer in p.choices for p in ps)  # multiple-choice form
        assert all(p.answer.strip() for p in ps)  # free-answer form: the gold text itself


def test_generators_are_deterministic_for_a_seed():
    a = load_split("embedded", "eval", 20, seed=7)
    b = load_split("embedded", "eval", 20, seed=7)
    c = load_split("embedded", "eval", 20, seed=8)
    assert a == b
    assert [p.question for p in a] != [p.question for p in c]


def test_calibration_and_evaluation_are_disjoint():
    from cap_edge.tasks.sources import calib_reserve

    calib = [p for f in FAMILIES for p in load_split(f"embedded:{f}", "calib", calib_reserve(f))]  # every reserved problem
    ev = load_split("embedded", "eval", 100)
    check_disjoint(calib, ev)  # raises on overlap
    assert not {p.key for p in calib} & {p.key for p in ev}


def test_overlap_is_detected():
    ps = load_split("embedded:dates", "eval", 3)
    with pytest.raises(TaskError, match="overlap"):
        check_disjoint(ps[:2], ps[1:])


def test_interleaved_calibration_covers_families():
    ps = calibration_problems("embedded", 16)
    assert len(ps) == 16 and len({p.family for p in ps[:8]}) == 8


def test_jsonl_schema_and_split(tmp_path):
    f = tmp_path / "t.jsonl"
    rows = [{"question": f"What is {i} plus 1?", "answer": str(i + 1), "choices": [str(i + 1), str(i)]} for i in range(40)]
    f.write_text("\n".join(json.dumps(r) for r in rows))
    assert len(read_jsonl(f)) == 40
    calib, ev = load_split(str(f), "calib"), load_split(f"jsonl:{f}", "eval")
    assert len(calib) + len(ev) == 40 and calib and ev
    check_disjoint(calib, ev)


@pytest.mark.parametrize("content,msg", [
    ("", "no problems"),
    ('{"question": "q"}', "answer"),
    ('{"question": "q", "answer": "a", "choices": ["b", "c"]}', "not among"),
    ('{"question": "q", "answer": "a", "bogus": 1}', "unknown key 'bogus'"),
    ("not json", "not valid JSON"),
])
def test_bad_jsonl_is_clear_error(tmp_path, content, msg):
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    with pytest.raises(TaskError, match=msg):
        read_jsonl(f)


def test_bad_specs_are_clear_errors(tmp_path):
    with pytest.raises(TaskError, match="empty task spec"):
        load_split("", "eval")
    with pytest.raises(TaskError, match="unknown embedded family"):
        load_split("embedded:nope", "eval")
    with pytest.raises(TaskError, match="unknown task spec"):
        load_split("bogus:x", "eval")
    with pytest.raises(TaskError, match="no local dataset"):
        load_split(f"gsm8k:{tmp_path}/missing", "eval")
    with pytest.raises(TaskError, match="empty"):
        calibration_problems("embedded", 0)
    with pytest.raises(TaskError):
        Problem("x", "f", "q", " ")


def test_knowledge_families_reserve_fewer_calibration_problems_and_say_so():
    from cap_edge.tasks.sources import calib_reserve

    assert calib_reserve("geography") < calib_reserve("arithmetic")
    assert len(load_split("embedded:geography", "eval", 100)) == 100  # the CLI default still fits
    with pytest.raises(TaskError, match="calibration split of 'geography' holds 48 problems; asked for 49"):
        load_split("embedded:geography", "calib", 49)
    with pytest.raises(TaskError, match="cannot produce .* unique problems"):
        load_split("embedded:animals", "eval", 1000)


def test_evaluation_tail_starts_past_a_pool_and_ends_with_the_family():
    from cap_edge.tasks.sources import evaluation_tail

    first = {p.key for p in load_split("embedded:animals", "eval", 100)}
    tail = evaluation_tail("animals", 100, 500)  # animals' pool holds 149 held-out problems
    assert len(tail) == 49 and not {p.key for p in tail} & first
    assert [p.key for p in evaluation_tail("opposites", 10, 5)] == [p.key for p in load_split("embedded:opposites", "eval", 15)[10:]]
