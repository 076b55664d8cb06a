"""Unsupervised domain adaptation methods (DenseMTL Sec. 4.5, App. B.3), registered by name.

The output-space adversaries (``output_adversary.py``), keyframe-consistency distillation
(``keyframe_consistency.py``), its consecutive-frame variant (``temporal_consistency.py``), the
keyframe-arrival term (``keyframe_arrival.py``), the ``adapt:`` config section
(``config.py``) and ``mtl-train``'s adaptation mode (``mode.py``, called by the Trainer);
docs/adaptation.md.
"""

from .keyframe_arrival import ArrivalConfig, KeyframeArrival
from .keyframe_consistency import ConsistencyConfig, KeyframeConsistency, consistency_loss
from .output_adversary import ADAPTATION, MultiTaskOutputAdversary, minmax_normalise, self_information
from .temporal_consistency import TemporalConfig, TemporalConsistency

__all__ = ["ADAPTATION", "ArrivalConfig", "ConsistencyConfig", "KeyframeArrival", "KeyframeConsistency",
           "MultiTaskOutputAdversary", "TemporalConfig", "TemporalConsistency", "consistency_loss",
           "minmax_normalise", "self_information"]
