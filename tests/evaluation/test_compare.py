"""perk compare (perk_cli.evaluation.compare): the 2x2 table of two methods on the same tasks and its exact
sign test."""

import json
import pytest

from perk_cli.evaluation import compare as paired
from tests.conftest import run_cli


@pytest.mark.parametrize("wins, losses, p", [
    (0, 0, 1.0),
    (3, 0, 2 / 8),            # 2 x P(3 of 3)
    (5, 1, 2 * (1 + 6) / 64),  # 2 x P(at most 1 of 6)
    (2, 2, 1.0),
    (1, 9, 2 * (1 + 10) / 1024),
])
def test_sign_test_against_hand_computed_values(wins, losses, p):
    assert paired.sign_test(wins, losses) == pytest.approx(p)


def _rows(method, correct, **extra):  # as perk eval writes them: correct is 1.0 or 0.0
    return [{"id": f"t{i}", "method": method, "correct": float(c), **{k: v[i] for k, v in extra.items()}}
            for i, c in enumerate(correct)]


def test_compare_counts_the_table_and_splits_by_what_the_truncated_reader_read(tmp_path):
    first = {r["id"]: r for r in _rows("perk", [True, True, True, False, True, False])}
    second = {r["id"]: r for r in _rows("base-truncated", [True, False, False, False, True],
                                        support_read=[True, False, False, True, True])}
    result = paired.compare(first, second)
    assert (result["tasks"], result["unmatched"]) == (5, 1)
    assert (result["both"], result["only_first"], result["only_second"], result["neither"]) == (2, 2, 0, 1)
    assert result["em_first"] == pytest.approx(4 / 5) and result["em_second"] == pytest.approx(2 / 5)
    assert result["p_two_sided"] == pytest.approx(0.5)
    assert result["by_support_read"] == {
        "read": {"tasks": 3, "em_first": pytest.approx(2 / 3), "em_second": pytest.approx(2 / 3)},
        "cut": {"tasks": 2, "em_first": 1.0, "em_second": 0.0}}


def test_perk_compare_reads_two_evaluations_and_refuses_a_missing_method_in_one_line(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows("perk", [True, True, False])
                                                 + _rows("plain-ttt", [False, False, False])))
    (b / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows("perk", [False, True, False])))
    code, out, err = run_cli(["compare", str(a), f"{b / 'predictions.jsonl'}:perk", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert (result["tasks"], result["only_first"], result["only_second"], result["neither"]) == (3, 1, 0, 1)
    assert result["p_two_sided"] == 1.0 and result["em_first"] == pytest.approx(2 / 3)
    # the same method in two evaluations is named by its argument; one evaluation's two methods by theirs
    code, out, _ = run_cli(["compare", str(a), str(b)], capsys)
    assert code == 0 and f"{a}: EM 0.667    {b}: EM 0.333" in out and "sign test on the 1 disagreements" in out
    code, out, _ = run_cli(["compare", f"{a}:perk", f"{a}:plain-ttt"], capsys)
    assert code == 0 and "perk: EM 0.667    plain-ttt: EM 0.000" in out
    code, _, err = run_cli(["compare", str(a), f"{b}:plain-ttt"], capsys)
    assert code == 2 and err.strip() == f"error: {b}:plain-ttt: no rows of method 'plain-ttt' in " \
        f"{b / 'predictions.jsonl'} (it holds perk); name one with :METHOD"
    code, _, err = run_cli(["compare", str(a), str(tmp_path / "nowhere")], capsys)
    assert code == 2 and "nowhere: no such evaluation" in err and "Traceback" not in err
    (b / "predictions.jsonl").write_text("not json\n")
    code, _, err = run_cli(["compare", str(a), str(b)], capsys)
    assert code == 2 and "line 1 is not JSON" in err
    (b / "predictions.jsonl").write_text("".join(json.dumps({**r, "id": "x" + r["id"]}) + "\n"
                                                 for r in _rows("perk", [True])))
    code, _, err = run_cli(["compare", str(a), str(b)], capsys)
    assert code == 2 and "share no task id" in err
