"""Benchmarks scored as lm-evaluation-harness scores them: SuperGLUE, XStoryCloze, TinyStories (docs/eval.md).

- ``tasks/``: one file per task family and the registry (``TASKS``, ``GROUPS``);
- ``scorer.py``: batched log-likelihoods (planning, shared contexts); ``tinystories.py``: loss and bits per byte;
- ``suite.py``: ``BenchmarkSuite`` (prepare once, score any model) and the result files;
- ``report.py``: the Table 2 markdown; ``evaluator.py``: the in-loop evaluator; ``linreg eval``: the CLI.
"""
from eval.benchmarks.suite import BenchmarkSuite, default_batch_tokens, results_to_scalars, write_results

__all__ = ["BenchmarkSuite", "default_batch_tokens", "results_to_scalars", "write_results"]
