"""Unsupervised domain adaptation methods (DenseMTL Sec. 4.5, App. B.3), registered by name.

The output-space adversaries (``output_adversary.py``), keyframe-consistency distillation
(``keyframe_consistency.py``), the ``adapt:`` config section
(``config.py``) and ``mtl-train``'s adaptation mode (``mode.py``, called by the Trainer);
docs/adaptation.md.
"""

from .keyframe_consistency import ConsistencyConfig, KeyframeConsistency, consistency_loss
from .output_adversary import ADAPTATION, MultiTaskOutputAdversary, minmax_normalise, self_information

__all__ = ["ADAPTATION", "ConsistencyConfig", "KeyframeConsistency", "MultiTaskOutputAdversary",
           "consistency_loss", "minmax_normalise", "self_information"]
