"""Depth pruning by linearity (Razzhigaev et al. 2024, §5): choose the most prunable blocks by a criterion, remove
them or replace them by a fitted linear map, optionally heal by distillation through the Trainer, evaluate
("metric vs blocks changed") and export models that load with plain ``AutoModelForCausalLM``. See docs/pruning.md.

    python -m prune --model PATH --criterion linearity --methods remove,linear --k 1..4 --out DIR
"""
