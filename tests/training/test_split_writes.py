"""Meta-training for memories that grow (train.split_writes): a task written in two calls is exactly the
memory `perk adapt` then `perk adapt --into` would write, and its outer loss differentiates through both."""

import json
import random

import pytest
import torch

from perk_cli.data.schema import Task
from perk_cli.data.segment import segment_text
from perk_cli.engine.batches import MetaTask
from perk_cli.memory import GROW_STEP_SCALE, adapt_segments, adapting_runtime
from perk_cli.prompts import encode_task
from perk_cli.training.meta_train import split_write
from tests.conftest import random_init_checkpoint, run_cli

FIRST = "Mary went to the kitchen. John went to the garden. Sandra travelled to the office."
SECOND = "Mary moved to the hallway. Daniel journeyed to the bedroom. John went back to the kitchen."


@pytest.mark.parametrize("recency", [0.0, 2.0])
def test_a_task_written_in_two_calls_is_the_memory_adapt_into_grows(tmp_path, recency):
    runtime, origin = adapting_runtime(checkpoint=random_init_checkpoint(tmp_path / "ckpt", prompt={"segment_tokens": 16},
                                                                     inner={"recency": recency}))
    size = runtime.config.prompt.segment_tokens
    first, second = (segment_text(text, runtime.tokenizer, size) for text in (FIRST, SECOND))
    assert len(first) > 1 and len(second) > 1
    task = encode_task(runtime.tokenizer, Task(id="t", context=first + second, question="Where is Daniel?",
                                               answer="bedroom"), runtime.config.prompt)  # ids 0..N-1, as at test time
    split = MetaTask(task.context, task.question, first_write=len(first), grow_scale=GROW_STEP_SCALE)
    loss, result = runtime.meta.meta_loss(split)
    grown = adapt_segments(runtime, origin, second, into=adapt_segments(runtime, origin, first))
    for name, value in grown.lora.items():
        torch.testing.assert_close(result.params[name].detach(), value, atol=1e-6, rtol=1e-5)
    assert len(result.losses) == 2 * runtime.config.inner.steps  # both calls' inner losses, in order
    whole, _ = runtime.meta.meta_loss(task)
    assert abs(float(loss.detach()) - float(whole.detach())) > 1e-6  # written whole, the memory (and its loss) differs
    loss.backward()  # the meta-gradient reaches the LoRA init through both calls
    assert any(float(p.grad.abs().max()) > 0 for p in runtime.meta.lora_init().values() if p.grad is not None)


def test_split_write_cuts_a_share_of_tasks_at_a_random_row():
    def task(rows):
        ids = torch.ones(rows, 4, dtype=torch.long)
        from perk_cli.engine.batches import TokenBatch

        batch = TokenBatch(ids, torch.ones_like(ids), torch.ones_like(ids, dtype=torch.bool))
        return MetaTask(batch, TokenBatch(ids[:1], torch.ones_like(ids[:1]), torch.ones_like(ids[:1], dtype=torch.bool)))

    rng = random.Random(0)
    drawn = [split_write(task(5), 0.3, rng) for _ in range(2000)]
    cut = [t.first_write for t in drawn if t.first_write is not None]
    assert abs(len(cut) / 2000 - 0.3) < 0.04 and set(cut) == {1, 2, 3, 4}
    assert all(t.grow_scale == GROW_STEP_SCALE for t in drawn if t.first_write is not None)
    assert split_write(task(1), 1.0, rng).first_write is None  # one row cannot be written in two calls
    assert split_write(task(5), 0.0, rng).first_write is None
    with pytest.raises(ValueError, match="first_write"):
        MetaTask(task(3).context, task(3).question, first_write=3)


def test_meta_train_split_writes_trains_and_is_refused_with_the_higher_engine(qa1, tmp_path, capsys):
    code, out, err = run_cli(["meta-train", "--model", "tiny", "--task", str(qa1), "--max-steps", "2",
                              "--tasks-per-batch", "4", "--tasks-per-forward", "4", "--split-writes", "1",
                              "--eval-every", "2", "--eval-tasks", "2", "--no-baseline", "-o", str(tmp_path / "run"),
                              "-q", "--json"], capsys)
    assert code == 0, err
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train"]["split_writes"] == 1.0
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(torch.isfinite(torch.tensor(l["outer_loss"])) for l in lines)
    code, _, err = run_cli(["meta-train", "--model", "tiny", "--task", str(qa1), "--max-steps", "1",
                            "--split-writes", "0.5", "--engine", "higher", "--unroll", "second-order",
                            "--weighting-mode", "legacy", "--inner-optimizer", "adam", "-o", str(tmp_path / "h")],
                           capsys)
    assert code != 0 and "split_writes" in err and "higher" in err and len(err.strip().splitlines()) == 1, err
