"""The one error type of pruning: bad input a user can fix (printed as one ``error: ...`` line by the CLI)."""
from __future__ import annotations

from core.errors import ConfigError


class PruneError(ConfigError):
    """An impossible pruning request: k too large, an unknown criterion or method, a probe too small for the
    model width, a model family whose blocks cannot be found or changed."""
