"""Greedy decoding shared by every method: the first new token may not end the answer."""

import torch

from perk_cli.config import ModelSettings, PromptSettings
from perk_cli.models.base import load_base
from perk_cli.prompts import answer_question, ending_tokens, generate_text


def test_an_answer_never_starts_with_a_token_that_ends_it():
    model, tokenizer = load_base(ModelSettings(name="tiny"))
    eos = tokenizer.eos_token_id
    # Make the model want to stop at once, as an Instruct base does after `Answer:`.
    handle = model.get_output_embeddings().register_forward_hook(
        lambda module, args, output: output.index_fill(-1, torch.tensor([eos]), 0.0)
        + torch.nn.functional.one_hot(torch.tensor(eos), output.shape[-1]) * 100.0)
    try:
        prompt = tokenizer("Where is Mary?\nAnswer:", return_tensors="pt")["input_ids"]
        full = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=5,
                              do_sample=False, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
        assert full[0, prompt.shape[1]:].tolist()[0] == eos  # undecorated greedy decoding: an empty answer
        raw = generate_text(model, tokenizer, prompt, max_new_tokens=5)
        assert raw.strip() != ""
        assert len(tokenizer(raw, add_special_tokens=False)["input_ids"]) == 1  # then it stops at eos
        answer, _ = answer_question(model, tokenizer, "Where is Mary?", 2, PromptSettings(), max_new_tokens=5)
        assert answer != ""
    finally:
        handle.remove()
    assert eos in ending_tokens(model, tokenizer) and tokenizer.pad_token_id in ending_tokens(model, tokenizer)
