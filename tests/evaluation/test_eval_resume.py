"""perk eval keeps every scored task: rows appended as they are scored, a checked folder, --resume that
gives the metrics an uninterrupted run gives, and a default folder that no other evaluation overwrites."""

import json
from pathlib import Path

import pytest

from perk_cli.config import EvalSettings
from perk_cli.errors import Interrupted, PerkError
from perk_cli.evaluation import evaluate as evaluation
from perk_cli.evaluation.evaluate import evaluate
from tests.conftest import one_step_run, prepared_qa1, run_cli


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    data = prepared_qa1(tmp_path_factory, train=8, validation=4, test=6, seed=3)
    return data, one_step_run(data, tmp_path_factory.mktemp("runs") / "run")


def _settings(run, out, **overrides):
    data, checkpoint = run
    values = dict(checkpoint=str(checkpoint), task=str(data), baselines=["plain-ttt", "base"], plain_lr_grid=[1e-3, 1e-2],
                  plain_lr_tasks=2, max_new_tokens=3, limit=5, out=str(out) if out else None)
    return EvalSettings(**{**values, **overrides})


def _without_out(report):
    return {**report, "settings": {k: v for k, v in report["settings"].items() if k != "out"}}


def test_a_stopped_evaluation_keeps_its_rows_and_resumes_to_the_same_metrics(run, tmp_path, monkeypatch):
    straight = evaluate(_settings(run, tmp_path / "straight"))

    def stop_after_two(done, total):
        if done == 2:
            raise KeyboardInterrupt

    stopped = tmp_path / "stopped"
    with pytest.raises(Interrupted, match="after 2 of 5 tasks.*--resume"):
        evaluate(_settings(run, stopped), stop_after_two)
    rows = [json.loads(line) for line in (stopped / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 3 and len({r["id"] for r in rows}) == 2  # two tasks, perk + plain TTT + base each
    assert not (stopped / "metrics.json").exists()
    with open(stopped / "predictions.jsonl", "a") as f:  # a third task's row, torn by the stop mid-write
        f.write(json.dumps(rows[0])[:40])

    def no_tuning(*args, **kwargs):
        raise AssertionError("plain TTT's learning rate was tuned again on resume")

    monkeypatch.setattr(evaluation, "tune_plain_ttt", no_tuning)
    resumed_at = []
    resumed = evaluate(_settings(run, stopped), lambda done, total: resumed_at.append(done), resume=True)
    assert resumed_at[0] == 2 and resumed_at[-1] == 5  # the two scored tasks were not run again
    assert _without_out(json.loads((stopped / "metrics.json").read_text())) == \
        _without_out(json.loads((tmp_path / "straight" / "metrics.json").read_text()))
    assert (stopped / "predictions.jsonl").read_text() == (tmp_path / "straight" / "predictions.jsonl").read_text()
    assert resumed["methods"] == straight["methods"]


def test_an_evaluations_folder_is_refused_to_another_evaluation_and_overwritten_only_when_asked(run, tmp_path, capsys):
    out = tmp_path / "ev"
    evaluate(_settings(run, out, limit=2))
    with pytest.raises(PerkError, match="holds an evaluation \\(2 tasks scored\\); pass --resume"):
        evaluate(_settings(run, out, limit=2))
    with pytest.raises(PerkError, match="differs in settings.limit \\(then 2, now 3\\)"):
        evaluate(_settings(run, out, limit=3), resume=True)
    data, checkpoint = run
    code, _, err = run_cli(["eval", "--checkpoint", str(checkpoint), "--task", str(data), "--limit", "3",
                            "--baselines", "", "--max-new-tokens", "2", "--out", str(out), "--overwrite", "-q"], capsys)
    assert code == 0, err
    assert json.loads((out / "metrics.json").read_text())["n_tasks"] == 3
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 3


def test_an_unusable_output_folder_is_refused_before_the_first_task(run, tmp_path, monkeypatch, capsys):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the output folder was checked")

    monkeypatch.setattr(evaluation, "load_runtime", no_model)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    data, checkpoint = run
    for out, expected in ((blocker / "ev", "cannot create the folder"), (blocker, "is a file"),
                          (Path(evaluation.__file__).parents[1] / "shipped" / "ev", "inside the installed perk package")):
        code, _, err = run_cli(["eval", "--checkpoint", str(checkpoint), "--task", str(data), "--out", str(out)], capsys)
        assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
    assert not (Path(evaluation.__file__).parents[1] / "shipped" / "ev").exists()


def test_the_default_folder_is_named_by_task_and_settings_under_runs(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = evaluate(_settings(run, None, limit=1, baselines=[]))
    second = evaluate(_settings(run, None, limit=2, baselines=[]))
    data, checkpoint = run
    for report in (first, second):
        out = Path(report["out"])
        assert out.parent == Path("runs") / "eval" and out.name.startswith(f"{checkpoint.name}-{data.name}-test-")
    assert first["out"] != second["out"]
    assert json.loads((Path(first["out"]) / "metrics.json").read_text())["n_tasks"] == 1  # not overwritten
    again = evaluate(_settings(run, None, limit=1, baselines=[]), resume=True)  # the same command finds it again
    assert again["out"] == first["out"] and again["methods"] == first["methods"]
