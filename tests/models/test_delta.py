"""A base shipped as a delta file: low-rank factors by hand, the file loading as the tuned model through
--model, unchanged tensors left out, and the one-line errors for files that are not deltas."""

import copy

import pytest
import torch

from perk_cli.config import ModelSettings
from perk_cli.errors import PerkError
from perk_cli.models.base import SHIPPED_DELTAS, SHIPPED_DIR, load_base, load_tokenizer, resolve_model_name
from perk_cli.models.delta import FORMAT, low_rank, make_delta, read_delta_metadata, save_delta
from perk_cli.models.tiny import build_tiny_tokenizer
from tests.conftest import micro_llama


def test_low_rank_is_the_truncated_svd_and_its_error():
    gen = torch.Generator().manual_seed(0)
    matrix = torch.randn(12, 8, generator=gen, dtype=torch.float64)
    a, b, error = low_rank(matrix, 3)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    expected = u[:, :3] @ torch.diag(s[:3]) @ vh[:3]
    assert torch.allclose((a.double() @ b.double()), expected, atol=1e-5)
    assert error == pytest.approx(float(s[3:].square().sum().sqrt() / s.square().sum().sqrt()), rel=1e-9)
    rank_two = torch.randn(12, 2, generator=gen) @ torch.randn(2, 8, generator=gen)
    a, b, error = low_rank(rank_two, 2)
    assert error < 1e-6 and torch.allclose(a @ b, rank_two, atol=1e-5)


def _base_dir(tmp_path):
    base = micro_llama(dtype=torch.float32)
    directory = tmp_path / "base"
    base.save_pretrained(directory)
    build_tiny_tokenizer().save_pretrained(directory)
    return load_base(ModelSettings(name=str(directory)))[0], directory


def _tuned(base):
    """The base with a rank-2 change to one matrix, a rank-1 change to the (tied) embedding and a
    changed norm vector; everything else as it was."""
    tuned = copy.deepcopy(base)
    gen = torch.Generator().manual_seed(1)
    params = dict(tuned.named_parameters())
    with torch.no_grad():
        q = params["model.layers.1.self_attn.q_proj.weight"]
        q += 0.1 * torch.randn(q.shape[0], 2, generator=gen) @ torch.randn(2, q.shape[1], generator=gen)
        embed = params["model.embed_tokens.weight"]
        embed += 0.1 * torch.randn(embed.shape[0], 1, generator=gen) @ torch.randn(1, embed.shape[1], generator=gen)
        params["model.layers.0.input_layernorm.weight"] += 0.25
    return tuned


def test_a_delta_file_loads_as_the_tuned_model(tmp_path):
    base, directory = _base_dir(tmp_path)
    tuned = _tuned(base)
    tensors, report = make_delta(base, tuned, rank=2)
    assert sorted(tensors) == ["model.embed_tokens.weight.a", "model.embed_tokens.weight.b",
                               "model.layers.0.input_layernorm.weight.full",
                               "model.layers.1.self_attn.q_proj.weight.a", "model.layers.1.self_attn.q_proj.weight.b"]
    assert tensors["model.layers.1.self_attn.q_proj.weight.a"].dtype == torch.float16
    assert all(error < 2e-3 for error in report.values())  # exact rank: only float16 rounding is lost
    path = tmp_path / "reader.safetensors"
    save_delta(path, tensors, base=str(directory), rank=2, report=report, note="test")
    assert read_delta_metadata(path)["format"] == FORMAT

    loaded, tokenizer = load_base(ModelSettings(name=str(path)))
    for (name, got), want in zip(loaded.named_parameters(), tuned.parameters()):
        assert torch.allclose(got, want, atol=2e-3), name  # float16 factors of entries up to ~1
    ids = torch.tensor([[1, 5, 9, 14, 3]])
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, tuned(input_ids=ids).logits, atol=1e-3)
        assert not torch.allclose(base(input_ids=ids).logits, tuned(input_ids=ids).logits, atol=1e-3)
    assert load_tokenizer(str(path)).get_vocab() == tokenizer.get_vocab() == build_tiny_tokenizer().get_vocab()


def test_a_truncated_delta_reports_the_error_it_ships(tmp_path):
    base, _ = _base_dir(tmp_path)
    tuned = copy.deepcopy(base)
    name = "model.layers.0.mlp.down_proj.weight"
    with torch.no_grad():
        dict(tuned.named_parameters())[name].add_(torch.randn(16, 32, generator=torch.Generator().manual_seed(2)))
    tensors, report = make_delta(base, tuned, rank=4)
    diff = (dict(tuned.named_parameters())[name] - dict(base.named_parameters())[name]).double()
    s = torch.linalg.svdvals(diff)
    assert report == {name: pytest.approx(float(s[4:].norm() / s.norm()), abs=1e-3)}
    assert tensors[f"{name}.a"].shape == (16, 4) and tensors[f"{name}.b"].shape == (4, 32)


def test_files_that_are_not_deltas_are_one_line_errors(tmp_path):
    from safetensors.torch import save_file

    base, directory = _base_dir(tmp_path)
    plain = tmp_path / "weights.safetensors"
    save_file({"x": torch.zeros(2)}, str(plain))
    with pytest.raises(PerkError, match="not a perk base delta"):
        load_base(ModelSettings(name=str(plain)))
    with pytest.raises(PerkError, match="no such file"):
        load_base(ModelSettings(name=str(tmp_path / "missing.safetensors")))

    tensors, report = make_delta(base, _tuned(base), rank=2)
    first = tmp_path / "first.safetensors"
    save_delta(first, tensors, base=str(directory), rank=2, report=report)
    nested = tmp_path / "nested.safetensors"
    save_delta(nested, tensors, base=str(first), rank=2, report=report)
    with pytest.raises(PerkError, match="itself a delta"):
        load_base(ModelSettings(name=str(nested)))

    foreign = tmp_path / "foreign.safetensors"
    save_delta(foreign, {"transformer.wte.weight.full": torch.zeros(3)}, base=str(directory), rank=2, report={})
    with pytest.raises(PerkError, match="a delta for another model"):
        load_base(ModelSettings(name=str(foreign)))


def test_make_delta_refuses_models_of_another_shape():
    with pytest.raises(PerkError, match="do(es)? not have the base's parameters"):
        make_delta(micro_llama(n_layer=2), micro_llama(n_layer=3), rank=2)


@pytest.mark.skipif(not (SHIPPED_DIR / SHIPPED_DELTAS["smollm2-reader"]).is_file(), reason="no shipped reader")
def test_the_shipped_reader_is_a_delta_of_the_packaged_smollm2():
    metadata = read_delta_metadata(resolve_model_name("smollm2-reader"))
    assert metadata["base"] == "smollm2" and int(metadata["rank"]) >= 1


def test_the_benchmark_script_writes_a_delta_that_loads_and_its_report(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    base, directory = _base_dir(tmp_path)
    tuned_dir = tmp_path / "tuned"
    _tuned(base).save_pretrained(tuned_dir)
    build_tiny_tokenizer().save_pretrained(tuned_dir)
    out = tmp_path / "shipped" / "reader.safetensors"
    script = Path(__file__).resolve().parents[2] / "experiments" / "reader_delta.py"
    done = subprocess.run([sys.executable, str(script), "--tuned", str(tuned_dir), "--base", str(directory),
                           "--rank", "2", "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["rank"] == 2 and report["tensors_changed"] == 3 and report["bytes"] == out.stat().st_size
    assert report["relative_error"]["q_proj"]["max"] < 2e-3
    loaded, _ = load_base(ModelSettings(name=str(out)))
    ids = torch.tensor([[1, 5, 9, 14, 3]])
    with torch.no_grad():
        want = load_base(ModelSettings(name=str(tuned_dir)))[0](input_ids=ids).logits
        assert torch.allclose(loaded(input_ids=ids).logits, want, atol=1e-3)
    done = subprocess.run([sys.executable, str(script), "--tuned", str(tmp_path), "--out", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "not a model directory" in done.stderr
    again = tmp_path / "again.safetensors"  # a delta as the base: refused up front, nothing written
    done = subprocess.run([sys.executable, str(script), "--tuned", str(tuned_dir), "--base", str(out),
                           "--out", str(again)], capture_output=True, text=True)
    assert done.returncode == 2 and "is itself a delta" in done.stderr and not again.exists(), done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("reader_delta.py: error: --base ")  # after the usage


def test_the_benchmark_script_expands_a_delta_into_the_model_it_loads_as(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    base, directory = _base_dir(tmp_path)
    tensors, report = make_delta(base, _tuned(base), rank=2)
    delta = tmp_path / "reader.safetensors"
    save_delta(delta, tensors, base=str(directory), rank=2, report=report)
    script = Path(__file__).resolve().parents[2] / "experiments" / "reader_delta.py"
    out = tmp_path / "expanded"
    done = subprocess.run([sys.executable, str(script), "--expand", str(delta), "--out", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    expanded, tokenizer = load_base(ModelSettings(name=str(out)))
    from_delta, _ = load_base(ModelSettings(name=str(delta)))
    ids = torch.tensor([[1, 5, 9, 14, 3]])
    with torch.no_grad():  # the same float32 weights: the same logits, exactly
        assert torch.equal(expanded(input_ids=ids).logits, from_delta(input_ids=ids).logits)
        assert not torch.allclose(expanded(input_ids=ids).logits, base(input_ids=ids).logits, atol=1e-4)
    assert tokenizer("Mary went")["input_ids"] == load_tokenizer(str(directory))("Mary went")["input_ids"]
    for bad, said in ((["--expand", str(delta), "--out", str(out)], "already exists"),
                      (["--expand", str(directory), "--out", str(tmp_path / "x")], "not a delta file"),
                      (["--expand", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "x")], "none"),
                      (["--out", str(tmp_path / "x")], "--tuned: missing")):
        done = subprocess.run([sys.executable, str(script), *bad], capture_output=True, text=True)
        assert done.returncode == 2 and said in done.stderr.strip().splitlines()[-1], done.stderr
    assert not (tmp_path / "x").exists()
