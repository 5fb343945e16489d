"""Pluggable losses on consecutive residual-stream states.

Add a regularizer: write ``regularizers/<name>.py`` with a ``Regularizer`` subclass implementing
``token_loss(x, y)``, and add one line to ``REGISTRY`` below; select it with ``regularizer.name=<name>``.
Optionally give it a ``fused_kernel()`` (see regularizers/fused.py) for speed and memory; ``token_loss`` stays the
reference it is tested against.
"""
from regularizers.base import NoRegularizer, Regularizer, RegularizerConfig
from regularizers.cosine import CosineRegularizer
from regularizers.mse import MSERegularizer

REGISTRY: dict[str, type[Regularizer]] = {
    "none": NoRegularizer,
    "cosine": CosineRegularizer,
    "mse": MSERegularizer,
}


def build_regularizer(cfg: RegularizerConfig) -> Regularizer:
    return REGISTRY[cfg.name](cfg)


__all__ = ["REGISTRY", "Regularizer", "RegularizerConfig", "build_regularizer"]
