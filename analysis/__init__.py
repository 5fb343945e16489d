"""The paper's analyses beyond one profile of one model (Razzhigaev et al. 2024, arXiv 2405.12250), one command each:

- ``linreg series``   linearity across a model's training checkpoints (the paper's Fig. 2);
- ``linreg finetune`` how fine-tuning a decoder as a classifier or reward model moves its linearity
  (Table 1);
- ``linreg probes``   per-layer linear probes on two-choice and classification tasks (Fig. 5);
- ``linreg stories``  TinyStories completions graded by a judge model on Eldan & Li's four criteria
  (Table 3).

They share the residual capture and the float64 solver of ``eval.linearity`` and the benchmark readers of
``eval.benchmarks``. Protocols, outputs and a worked example: docs/analyses.md.
"""
