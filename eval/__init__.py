"""Evaluation: validation loss, linearity profiles, benchmark tasks.

In-loop evaluators plug into the training core through ``eval.base.Evaluator`` and are listed in
``eval.hook.EVALUATORS``; each owns a config section under ``eval:`` (see ``eval/config.py``).
"""
