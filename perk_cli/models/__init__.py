"""Base models (loading, the tiny preset, the GGUF cache) and the LoRA attached to them."""
