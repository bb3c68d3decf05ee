"""benchmarks/paired.py: the 2x2 table of two methods on the same tasks and its exact sign test."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import benchmark_module

paired = benchmark_module("paired")
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "paired.py"


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


def test_cli_reads_two_files_and_refuses_a_missing_method_in_one_line(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps(r) + "\n" for r in _rows("perk", [True, True, False])))
    b.write_text("".join(json.dumps(r) + "\n" for r in _rows("base", [False, True, False])))
    done = subprocess.run([sys.executable, str(SCRIPT), f"{a}:perk", f"{b}:base", "--json"], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["tasks"], result["only_first"], result["only_second"]) == (3, 1, 0)
    done = subprocess.run([sys.executable, str(SCRIPT), f"{a}:perk", f"{a}:perk"], capture_output=True, text=True)
    assert done.returncode == 0 and f"{a}:perk: EM 0.667" in done.stdout and "only" in done.stdout
    done = subprocess.run([sys.executable, str(SCRIPT), f"{a}:perk", f"{b}:plain-ttt"], capture_output=True,
                          text=True)
    assert done.returncode == 1 and done.stderr.strip() == f"error: {b}: no rows of method 'plain-ttt' (it holds base)"
