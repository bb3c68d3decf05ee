"""experiments/recency.py: each bias scores the checkpoint with that recency in its inner loop (bias 0 as
`perk eval` scores the checkpoint itself), and its rows and order columns are written."""

import json
import subprocess
import sys
from pathlib import Path

from perk_cli.config import EvalSettings
from perk_cli.evaluation.evaluate import evaluate
from tests.conftest import one_step_run, prepared_qa1

SCRIPT = Path(__file__).resolve().parents[1] / "recency.py"


def test_each_bias_scores_the_checkpoint_under_that_recency(tmp_path_factory, tmp_path):
    data = prepared_qa1(tmp_path_factory, train=8, validation=4, test=0, seed=2)
    one_step_run(data, tmp_path / "run")
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "run"), str(data), "--bias", "0,6",
                           "-o", str(tmp_path / "probe")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "probe" / "recency.json").read_text())
    assert list(results) == ["0", "6"] and all(r["n"] == 4 for r in results.values())
    plain = evaluate(EvalSettings(checkpoint=str(tmp_path / "run"), task=str(data), split="validation", baselines=[],
                                  out=str(tmp_path / "plain")))
    assert results["0"]["em"] == plain["methods"]["perk"]["em"]

    def losses(name):
        rows = [json.loads(line) for line in (tmp_path / "probe" / name / "predictions.jsonl").open()]
        return {row["id"]: row["answer_loss"] for row in rows}

    reference = {json.loads(line)["id"]: json.loads(line)["answer_loss"]
                 for line in (tmp_path / "plain" / "predictions.jsonl").open()}
    assert losses("bias-0") == reference  # bias 0 is the checkpoint as it is
    assert losses("bias-6") != reference  # a bias changes the memories
