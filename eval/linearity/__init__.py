"""Linearity analysis of transformer decoders (Razzhigaev et al. 2024, "Your Transformer is Secretly Linear").

Definitions (implemented exactly):

- Linearity score. For embeddings X, Y (n x d) of the same n tokens: centre every column, divide each matrix by
  its Frobenius norm, then LS(X, Y) = 1 - min_A ||X~ A - Y~||_F^2 (unrestricted least squares, no bias beyond
  the centring). Equivalently the pooled R^2 of the multi-output OLS of Y on X with intercept. n must exceed
  d + 1, otherwise every score is trivially 1 (refused with ValueError).
- Residual stream h_0..h_L: h_0 = the embedding output (input of block 0), h_{i+1} = the output of block i,
  before the final norm (``model.capture.ResidualStream``).
- Layer-wise linearity: LS(h_i, h_{i+1}) for i = 0..L-1 (pair i is block i); without residual:
  LS(h_i, h_{i+1} - h_i). On request, the extra pair (h_{L-1}, final_norm(h_L)), labelled ``final_norm``.
- Norm ratio of block i: mean over tokens of ||h_{i+1} - h_i|| / ||h_{i+1}||.
- Per-model summary: the mean over the L block pairs of each quantity.
- Identity used (exact, with X_c, Y_c centred but *not* normalised): 1 - LS_wo = (1 - LS) ||Y_c||^2 / ||Y_c - X_c||^2,
  so both scores of a pair come from one least-squares solve.
- The authors' other measurements of the same states (``toolkit``): anisotropy (largest covariance eigenvalue over
  their sum), their TwoNN intrinsic dimension, and the logit lens (per-layer next-token loss of ``lm_head`` on
  each h_i, with and without the final norm, and their -log p(argmax)).
- Held-out linearity (``heldout``): the score of maps fitted on k - 1 folds of documents and scored on the
  left-out fold, pooled; percentile-bootstrap intervals over documents of both scores; chance levels from
  document-shuffled targets. ``heldout_linearity(x, y, groups)`` on plain tensors; ``linearity_profile(...,
  groups=...)`` for every pair of a profile.

Everything is computed in float64 (inputs of any float dtype are upcast exactly), on CPU or GPU.
Probe sets follow the paper's recipe (``probe``); ``linreg linearity`` profiles models and plots them;
``evaluator.LinearityEvaluator`` tracks the profile through training. See docs/linearity.md.
"""
from eval.linearity.heldout import HeldoutConfig, HeldoutResult, HeldoutStats
from eval.linearity.probe import (
                                  ProbeSetConfig,
                                  build_probe,
                                  read_probe_dataset,
                                  read_probe_text,
                                  sample_chunks,
                                  tokenize_chunks,
)
from eval.linearity.profile import Profile, StateCollector, model_profile, probe_groups, profile_from_states
from eval.linearity.score import PairStats, heldout_linearity, linearity_profile, linearity_score, pair_stats
from eval.linearity.state_measures import ToolkitConfig
from eval.linearity.toolkit import anisotropy, intrinsic_dimension, logit_lens

__all__ = [
    "HeldoutConfig", "HeldoutResult", "HeldoutStats", "PairStats", "ProbeSetConfig", "Profile", "StateCollector",
    "ToolkitConfig",
    "anisotropy", "build_probe", "heldout_linearity", "intrinsic_dimension", "linearity_profile", "linearity_score",
    "logit_lens", "model_profile", "pair_stats", "probe_groups", "profile_from_states", "read_probe_dataset",
    "read_probe_text", "sample_chunks", "tokenize_chunks",
]
