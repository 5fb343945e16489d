"""Depth pruning by linearity (Razzhigaev et al. 2024, §5) and the methods it is measured against (ReplaceMe,
reverse order, SLEB, magnitude compensation, sublayers, LLM-Streamline; ``prune.methods``): choose blocks, remove
them, replace them by fitted linear maps or one trained block, optionally heal through the Trainer, evaluate every
method the same way against plain removal ("metric vs blocks changed", % retained, paired bootstrap) and export
models that load with plain ``AutoModelForCausalLM``. See docs/pruning.md.

    linreg prune --model PATH --criterion linearity --methods all --k 1..4 --out DIR
"""
