"""experiments/tiny_reading_base.py: its held-out EM is greedy decoding's, its loss the package's answer
loss, its saved base loads with `--model DIR` and gives the trained logits, and a short run ends saved."""

import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments"))

from tiny_reading_base import build_model, collate, encode_sets, losses, save  # noqa: E402

from perk_cli.config import GENERATOR_LAYOUT, ModelSettings, PrepareSettings, PromptSettings  # noqa: E402
from perk_cli.prepare import _generate  # noqa: E402
from perk_cli.engine.losses import answer_loss  # noqa: E402
from perk_cli.models.base import load_base  # noqa: E402
from perk_cli.models.tiny import build_tiny_tokenizer  # noqa: E402
from perk_cli.prompts import answer_question, encode_question  # noqa: E402

SPEC = ("babi", "qa1", 4, None)


def _overfit_one(tokenizer, rows, steps=150):
    """A micro base that has memorised the first row's answer (and no other)."""
    torch.manual_seed(0)
    model = build_model(tokenizer, layers=1, width=64, heads=2, positions=256)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    ids, attention, answer = collate(rows[:1], tokenizer.eos_token_id, torch.device("cpu"))
    for _ in range(steps):
        loss = losses(model, ids, attention, answer, tokenizer.eos_token_id)[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_rows_are_the_in_context_format_with_only_the_answer_and_eos_as_targets():
    tokenizer = build_tiny_tokenizer()
    rows = encode_sets(SPEC, 3, seed=5, tokenizer=tokenizer)
    task = _generate(PrepareSettings(task="babi", subtask="qa1", facts=4, segment_tokens=64, train=3, validation=0,
                                     test=0, seed=5, out="-", **GENERATOR_LAYOUT), tokenizer, None)["train"][0]
    ids, mask = rows[0]
    expected = "\n".join(task.context) + f"\nYou have memorized {len(task.context)} documents.\n{task.question}\nAnswer: {task.answer}"
    assert tokenizer.decode(ids) == expected + tokenizer.eos_token
    assert tokenizer.decode([i for i, m in zip(ids, mask) if m]) == f" {task.answer}" + tokenizer.eos_token


def test_teacher_forced_hits_bound_greedy_decoding_and_the_loss_is_the_packages_answer_loss():
    tokenizer = build_tiny_tokenizer()
    rows = encode_sets(SPEC, 6, seed=7, tokenizer=tokenizer)
    tasks = _generate(PrepareSettings(task="babi", subtask="qa1", facts=4, segment_tokens=64, train=6, validation=0,
                                      test=0, seed=7, out="-", **GENERATOR_LAYOUT), tokenizer, None)["train"]
    model = _overfit_one(tokenizer, rows)
    ids, attention, answer = collate(rows, tokenizer.eos_token_id, torch.device("cpu"))
    with torch.no_grad():
        _, _, strict, loose = losses(model, ids, attention, answer, tokenizer.eos_token_id)
    greedy = [answer_question(model, tokenizer, t.question, len(t.context), PromptSettings(), max_new_tokens=8,
                              context=t.context)[0] == t.answer for t in tasks]
    assert strict[0] and greedy[0]  # the memorised row: a test that could not tell hits from misses fails here
    assert not all(loose.tolist())
    for s, g, l in zip(strict.tolist(), greedy, loose.tolist()):
        assert s <= g <= l
    # The answer cross-entropy of one row is the package's answer loss on that task's batch.
    t = tasks[1]
    batch = encode_question(tokenizer, t.question, len(t.context), PromptSettings(), t.answer, t.support,
                            context=t.context)
    with torch.no_grad():
        mine = losses(model, *collate(rows[1:2], tokenizer.eos_token_id, torch.device("cpu")), tokenizer.eos_token_id)[0]
        theirs = answer_loss(lambda **kw: model(**kw), batch)
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


def test_saved_base_loads_as_a_model_directory_with_the_trained_logits(tmp_path):
    tokenizer = build_tiny_tokenizer()
    rows = encode_sets(SPEC, 2, seed=3, tokenizer=tokenizer)
    model = _overfit_one(tokenizer, rows, steps=20)
    save(model, tokenizer, tmp_path / "model")
    loaded, loaded_tokenizer = load_base(ModelSettings(name=str(tmp_path / "model"), dtype="float32", device="cpu"))
    assert loaded.config.n_positions == 256 and loaded.config.n_layer == 1
    assert loaded_tokenizer.encode("Where is Mary?") == tokenizer.encode("Where is Mary?")
    ids, attention, _ = collate(rows, tokenizer.eos_token_id, torch.device("cpu"))
    with torch.no_grad():
        want, got = model(input_ids=ids, attention_mask=attention).logits, loaded(input_ids=ids, attention_mask=attention).logits
    torch.testing.assert_close(got, want, rtol=0, atol=0.05)  # float16 weights on disk
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.99


def test_a_short_run_ends_with_a_saved_base_and_a_curve(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "tiny_reading_base.py"), "--out", str(out), "--steps", "4",
         "--batch", "4", "--workers", "1", "--chunk", "2", "--held-out", "2", "--layers", "1", "--width", "32",
         "--heads", "2", "--positions", "512", "--eval-every", "0", "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    entries = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in entries if "held_out" in e and "event" not in e] == [1, 2, 3, 4]
    assert entries[-1]["event"] == "done" and entries[-1]["step"] == 4
    assert set(entries[-1]["held_out"]) == {"qa1@128", "qa1@256", "qa2@128", "recall@128"}
    model, _ = load_base(ModelSettings(name=str(out / "model"), dtype="float32", device="cpu"))
    assert model.config.n_embd == 32


def test_exactly_one_of_minutes_and_steps_is_asked_for(tmp_path):
    script = str(ROOT / "experiments" / "tiny_reading_base.py")
    for extra in ([], ["--steps", "2", "--minutes", "1"]):
        done = subprocess.run([sys.executable, script, "--out", str(tmp_path), *extra],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "give exactly one of --minutes and --steps" in done.stderr
        assert not (tmp_path / "metrics.jsonl").exists()  # refused before anything was written
