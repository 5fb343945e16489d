"""The decoder: transformers' MistralForCausalLM built from a typed config, plus residual-stream capture."""
