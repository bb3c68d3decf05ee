"""experiments/forced_vs_decoded.py: its summary against hand-computed figures, and a run end to end."""

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import experiment_module, one_step_run, prepared_qa1

SCRIPT = Path(__file__).resolve().parents[1] / "forced_vs_decoded.py"


def test_summary_counts_each_kind_of_disagreement():
    rows = [{"forced": True, "em": 1.0, "forced_s": 1.0, "decode_s": 3.0},
            {"forced": False, "em": 1.0, "forced_s": 2.0, "decode_s": 2.0},
            {"forced": False, "em": 0.0, "forced_s": 3.0, "decode_s": 5.0},
            {"forced": False, "em": 0.0, "forced_s": 2.0, "decode_s": 4.0}]
    result = experiment_module("forced_vs_decoded").summary(rows)
    assert (result["forced_em"], result["decoded_em"]) == (0.25, 0.5)
    assert (result["right_only_forced"], result["right_only_decoded"]) == (0, 1)
    assert (result["forced_s"], result["decoded_s"], result["speedup"]) == (2.0, 5.5, 2.75)  # medians 2 and 3.5


def test_the_script_scores_one_memory_both_ways(tmp_path_factory, tmp_path):
    data = prepared_qa1(tmp_path_factory, train=8, validation=3, test=0, seed=2)
    one_step_run(data, tmp_path / "run")
    out = tmp_path / "rows.jsonl"
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "run"), str(data), "--limit", "2",
                           "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    header, figures = done.stdout.strip().splitlines()
    assert header.split()[:3] == ["tasks", "forced", "EM"] and figures.split()[0] == "2"
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all(row["forced_s"] > 0 and row["decode_s"] > 0 for row in rows)
    assert all(row["em"] >= row["forced"] for row in rows)  # forced right implies decoded right
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "nowhere"), str(data)],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "nowhere" in done.stderr.strip().splitlines()[-1]
