"""experiments/lora_ablation.py: its variants partition the LoRA, a zeroed B is the base, the answer-only
match is checked against the model's own greedy tokens, and the script runs end to end."""

import json
import subprocess
import sys
from pathlib import Path

import torch

from perk_cli.config import LoraSettings
from perk_cli.engine.batches import TokenBatch
from perk_cli.engine.lora import lora_parameters
from perk_cli.engine.losses import functional_model_call
from perk_cli.models.lora import attach_lora
from tests.conftest import experiment_module, micro_llama, one_step_run, prepared_qa1

SCRIPT = Path(__file__).resolve().parents[1] / "lora_ablation.py"


def test_the_variants_partition_the_lora_by_kind_and_by_layer():
    module = experiment_module("lora_ablation")
    peft = attach_lora(micro_llama(n_layer=4), LoraSettings(rank=2, alpha=4.0))
    names = list(lora_parameters(peft))
    variants = module.variants(names)
    every_b = variants["all off (the base)"]
    assert every_b == {n for n in names if ".lora_B." in n} and len(every_b) == 4 * 7
    attention, mlp = variants["attention off"], variants["mlp off"]
    assert attention | mlp == every_b and not attention & mlp and len(mlp) == 4 * 3
    assert variants["q,k off"] < attention and len(variants["q,k off"]) == 4 * 2
    low, high = variants["layers 0-1 off"], variants["layers 2-3 off"]
    assert low | high == every_b and not low & high and {module.layer_of(n) for n in low} == {0, 1}
    assert variants["all on"] == set()


def test_a_zeroed_b_is_the_base_and_the_answer_match_reads_only_the_answers_tokens():
    module = experiment_module("lora_ablation")
    peft = attach_lora(micro_llama(n_layer=2), LoraSettings(rank=2, alpha=4.0))
    torch.manual_seed(3)
    lora = {n: torch.randn_like(p) for n, p in lora_parameters(peft).items()}  # a LoRA that changes the model
    ids = torch.randint(1, 50, (1, 10))
    off = {n: torch.zeros_like(v) if ".lora_B." in n else v for n, v in lora.items()}
    with peft.disable_adapter():
        base = peft(input_ids=ids).logits
    assert torch.allclose(functional_model_call(peft, off)(input_ids=ids).logits, base)
    assert not torch.allclose(functional_model_call(peft, lora)(input_ids=ids).logits, base)

    runtime = type("Runtime", (), {"model": peft})()
    greedy = functional_model_call(peft, lora)(input_ids=ids).logits.argmax(-1)
    ones = torch.ones_like(ids)
    target = torch.zeros_like(ids, dtype=torch.bool)
    target[0, 5:] = True
    answer = torch.zeros_like(target)
    answer[0, 7:9] = True  # tokens 7 and 8 are the answer
    for j in (7, 8):  # ... and the model's own greedy choices there, given the tokens before them
        ids[0, j] = greedy[0, j - 1]
        greedy = functional_model_call(peft, lora)(input_ids=ids).logits.argmax(-1)
    ids[0, 9] = (greedy[0, 8] + 1) % 50  # a wrong token after the answer does not count
    batch = TokenBatch(ids, ones, target, answer)
    assert module.forced_right(runtime, lora, batch)[0]
    wrong = ids.clone()
    wrong[0, 8] = (greedy[0, 7] + 1) % 50
    assert not module.forced_right(runtime, lora, TokenBatch(wrong, ones, target, answer))[0]
    assert not module.forced_right(runtime, lora, TokenBatch(ids, ones, target, torch.zeros_like(answer)))[0]
    assert module.forced_right(runtime, lora, batch) == (True, False)  # token 9 is a target, and wrong
    whole = target.clone()
    whole[0, 5:7] = False
    whole[0, 9] = False
    assert module.forced_right(runtime, lora, TokenBatch(ids, ones, whole, answer)) == (True, True)


def test_the_script_prints_one_row_a_variant(tmp_path_factory, tmp_path):
    data = prepared_qa1(tmp_path_factory, train=8, validation=3, test=0, seed=2)
    one_step_run(data, tmp_path / "run")
    out = tmp_path / "rows.jsonl"
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "run"), str(data), "--split", "validation",
                           "--limit", "2", "--answer-format", "recite", "--out", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].split()[-1] == "2" and [line.split()[0] for line in lines[1:]] == \
        ["all", "attention", "mlp", "q,k", "layers", "layers", "all"]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    names = {"all on", "attention off", "mlp off", "q,k off", "layers 0-0 off", "layers 1-1 off", "all off (the base)"}
    assert len(rows) == 2 and all(set(row) == {"gold", "whole", *names} and set(row["whole"]) == names for row in rows)
    assert all(row[name] or not row["whole"][name] for row in rows for name in names)  # whole right: answer right
