"""`perk prepare --task mix`: prepared directories joined task by task, through the real entry point."""

import json

from perk_cli.data.mix import interleave
from tests.conftest import run_cli


def _generate(tmp_path, capsys, name, subtask, seed, *extra):
    out = tmp_path / name
    code, _, err = run_cli(["prepare", "--task", "babi", "--subtask", subtask, "--distractors", "2", "--train", "3",
                            "--validation", "2", "--test", "0", "--seed", str(seed), "-o", str(out), *extra], capsys)
    assert code == 0, err
    return out


def _ids(path):
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def test_interleave_takes_task_i_of_each_source_in_turn_until_all_are_spent():
    assert interleave([[1, 2, 3], ["a"], [10, 20]]) == [1, "a", 10, 2, 20, 3]
    assert interleave([[], [5]]) == [5]


def test_mix_interleaves_every_split_and_keeps_each_task_whole(tmp_path, capsys):
    qa1 = _generate(tmp_path, capsys, "qa1", "qa1", 1)
    qa2 = _generate(tmp_path, capsys, "qa2", "qa2", 2)
    out = tmp_path / "mix"
    code, stdout, err = run_cli(["prepare", "--task", "mix", "--input", f"{qa1},{qa2}", "-o", str(out), "--json"],
                                capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["counts"] == {"train": 6, "validation": 4}
    assert set(summary["sources"]) == {str(qa1), str(qa2)} and summary["sources"][str(qa2)]["subtask"] == "qa2"
    assert _ids(out / "train.jsonl") == ["qa1-train-00000", "qa2-train-00000", "qa1-train-00001",
                                         "qa2-train-00001", "qa1-train-00002", "qa2-train-00002"]
    mixed = {json.loads(line)["id"]: line for line in (out / "train.jsonl").read_text().splitlines()}
    for source in (qa1, qa2):  # every row is its source's row, byte for byte
        for line in (source / "train.jsonl").read_text().splitlines():
            assert mixed[json.loads(line)["id"]] == line


def test_two_seeds_of_one_subtask_are_told_apart_by_their_directory(tmp_path, capsys):
    a = _generate(tmp_path, capsys, "a", "qa1", 1)
    b = _generate(tmp_path, capsys, "b", "qa1", 2)
    code, _, err = run_cli(["prepare", "--task", "mix", "--input", f"{a},{b}", "-o", str(tmp_path / "m")], capsys)
    assert code == 0, err
    assert _ids(tmp_path / "m" / "validation.jsonl") == ["a/qa1-validation-00000", "b/qa1-validation-00000",
                                                         "a/qa1-validation-00001", "b/qa1-validation-00001"]


def test_bad_mixes_are_refused_in_one_line_naming_the_input(tmp_path, capsys):
    qa1 = _generate(tmp_path, capsys, "qa1", "qa1", 1)
    other = _generate(tmp_path, capsys, "other", "qa2", 1)
    info = json.loads((other / "prepare.json").read_text())
    info["settings"]["model"] = "smollm2"  # as if cut by another tokenizer (no second one is installed in CI)
    (other / "prepare.json").write_text(json.dumps(info))
    cases = [
        ([str(qa1)], "needs at least two prepared directories"),
        ([f"{qa1},{tmp_path / 'nope'}"], f"--input {tmp_path / 'nope'}: not a task directory"),
        ([f"{qa1},{other}"], "different --model tokenizers"),
    ]
    for (inputs, message) in cases:
        code, _, err = run_cli(["prepare", "--task", "mix", "--input", *inputs, "-o", str(tmp_path / "m")], capsys)
        assert code != 0 and message in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()  # nothing half-written
