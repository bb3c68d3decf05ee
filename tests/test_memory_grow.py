"""Memories that grow: `perk adapt more.txt --into mem.safetensors` adds a document without reading what
the memory holds again; the new segments continue its numbering and the inner steps start from its LoRA."""

import json
import shutil

import pytest
import torch

from perk_cli.config import RunConfig
from perk_cli.data.segment import segment_text
from perk_cli.memory import GROW_STEP_SCALE, Memory, adapt_text, adapting_runtime
from perk_cli.prompts import encode_context
from perk_cli.checkpoint import build_runtime, save_checkpoint
from tests.conftest import random_init_checkpoint, run_cli

FIRST = "Mary went to the kitchen. John went to the garden. Sandra travelled to the office."
SECOND = "Mary moved to the hallway. Daniel journeyed to the bedroom. John went back to the kitchen."


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return random_init_checkpoint(tmp_path_factory.mktemp("ckpt") / "run" / "best", prompt={"segment_tokens": 16})


def test_a_grown_memory_continues_the_numbering_and_starts_from_what_it_holds(checkpoint):
    runtime, origin = adapting_runtime(checkpoint=checkpoint)
    first = adapt_text(runtime, origin, FIRST)
    grown = adapt_text(runtime, origin, SECOND, into=first)
    held = int(first.metadata["segments"])
    segments = segment_text(SECOND, runtime.tokenizer, runtime.config.prompt.segment_tokens)
    assert held > 1 and grown.metadata["segments"] == str(held + len(segments)) and grown.metadata["documents"] == "2"

    def by_hand(doc_ids, start, scale=GROW_STEP_SCALE):
        context = encode_context(runtime.tokenizer, segments, runtime.config.prompt, doc_ids=doc_ids)
        return runtime.meta.adapt(context, start=start, step_scale=scale).params

    expected = by_hand(list(range(held, held + len(segments))), first.lora)
    assert all(torch.equal(grown.lora[name], expected[name]) for name in expected)
    assert grown.metadata["grow_step_scale"] == "0.5"
    # the test can tell: numbered from 0, at full step size, or started from the learned init, it differs
    renumbered = by_hand(list(range(len(segments))), first.lora)
    full_steps = by_hand(list(range(held, held + len(segments))), first.lora, scale=1.0)
    fresh = adapt_text(runtime, origin, SECOND)
    for other in (renumbered, full_steps, fresh.lora):
        assert any(not torch.equal(grown.lora[n], other[n]) for n in expected)
    assert all(torch.equal(adapt_text(runtime, origin, SECOND, into=first, grow_step_scale=1.0).lora[n], full_steps[n])
               for n in expected)
    assert grown.metadata["document_sha256"] not in (first.metadata["document_sha256"], fresh.metadata["document_sha256"])


def test_adapt_into_grows_the_file_with_the_checkpoint_that_wrote_it(checkpoint, tmp_path, capsys):
    (tmp_path / "first.txt").write_text(FIRST)
    (tmp_path / "more.txt").write_text(SECOND)
    memory = tmp_path / "mem.safetensors"
    code, _, err = run_cli(["adapt", str(tmp_path / "first.txt"), "-o", str(memory), "--checkpoint", str(checkpoint),
                            "-q"], capsys)
    assert code == 0, err
    before = Memory.load(memory)
    code, out, err = run_cli(["adapt", str(tmp_path / "more.txt"), "--into", str(memory), "--json"], capsys)
    assert code == 0, err
    after = Memory.load(memory)
    assert json.loads(out)["memory"] == str(memory) and after.metadata["documents"] == "2"
    runtime, origin = adapting_runtime(checkpoint=checkpoint)
    expected = adapt_text(runtime, origin, SECOND, into=before)
    assert all(torch.equal(after.lora[n], expected.lora[n]) for n in expected.lora)
    code, out, err = run_cli(["ask", str(memory), "Where is Daniel?", "--json"], capsys)
    assert code == 0, err
    first_file, full = tmp_path / "first.safetensors", tmp_path / "full.safetensors"
    before.save(first_file)  # --grow-step-scale reaches the inner loop; -o leaves the --into file as it was
    code, _, err = run_cli(["adapt", str(tmp_path / "more.txt"), "--into", str(first_file), "-o", str(full),
                            "--grow-step-scale", "1", "-q"], capsys)
    assert code == 0, err
    assert Memory.load(first_file).metadata == before.metadata
    expected_full = adapt_text(runtime, origin, SECOND, into=before, grow_step_scale=1.0)
    assert Memory.load(full).metadata["grow_step_scale"] == "1"
    assert all(torch.equal(Memory.load(full).lora[n], expected_full.lora[n]) for n in expected_full.lora)
    # another checkpoint cannot grow it: one line, the file untouched
    other = tmp_path / "other"
    shutil.copytree(checkpoint.parent, other)
    config = RunConfig.model_validate_json((checkpoint / "config.json").read_text())
    torch.manual_seed(9)
    save_checkpoint(other / "best", config, build_runtime(config).state_tensors())
    stamp = memory.read_bytes()
    code, _, err = run_cli(["adapt", str(tmp_path / "more.txt"), "--into", str(memory), "--checkpoint", str(other)],
                           capsys)
    assert code == 2 and "written by another checkpoint" in err and len(err.strip().splitlines()) == 1
    assert memory.read_bytes() == stamp
    code, _, err = run_cli(["adapt", str(tmp_path / "more.txt")], capsys)
    assert code == 2 and "--out: missing" in err
