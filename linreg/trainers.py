"""Which trainer trains a config, by its ``model.arch``: a new trainer is its module plus one line in ``TRAINERS``.

Entries name the class as ``"module:Class"`` and are imported on use: a trainer subclasses ``linreg.trainer.Trainer``
(which imports DeepSpeed), so the table stays importable by anything that only asks which trainer applies.
"""
from __future__ import annotations

import importlib

DEFAULT = "linreg.trainer:Trainer"  # the language model of ``model.arch: mistral``
TRAINERS = {
    "linear_attention": "linreg.icl_trainer:ICLTrainer",  # the in-context regression testbed
}


def trainer_class(cfg) -> type:
    """The trainer class of ``cfg`` (``TRAINERS[cfg.model.arch]``, else the language-model ``Trainer``)."""
    module, name = TRAINERS.get(cfg.model.arch, DEFAULT).split(":")
    return getattr(importlib.import_module(module), name)
