"""Benchmarks scored as lm-evaluation-harness scores them: SuperGLUE, XStoryCloze, ARC-Easy, and the loss tasks
TinyStories and WikiText-2 (docs/eval.md).

- ``tasks/``: the task base classes, one file per task family and the registry (``TASKS``, ``GROUPS``,
  ``DEFAULT_TASKS``);
- ``scorer.py``: batched log-likelihoods (planning, shared contexts); ``loss.py``: loss tasks (loss, bits per
  byte, perplexity over sliding windows), ``tinystories.py`` and ``wikitext2.py`` the two of them;
- ``suite.py``: ``BenchmarkSuite`` (prepare once, score any model) and the result files;
- ``report.py``: the Table 2 markdown; ``evaluator.py``: the in-loop evaluator; ``linreg eval``: the CLI.
"""
__all__ = ["BenchmarkSuite", "default_batch_tokens", "results_to_scalars", "write_results"]


def __getattr__(name: str):
    # suite.py is imported on first use, not with the package: ``python -m eval.benchmarks.report`` would otherwise
    # import report.py (through suite.py) before running it as __main__, a second copy of the module
    if name in __all__:
        from eval.benchmarks import suite

        return getattr(suite, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
