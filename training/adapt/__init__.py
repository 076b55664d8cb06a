"""Unsupervised domain adaptation methods (DenseMTL Sec. 4.5, App. B.3), registered by name.

Only the output-space adversaries exist so far (``output_adversary.py``); ``mtl-train`` has no
adaptation mode yet (docs/seed_systems.md, "Not done").
"""

from .output_adversary import ADAPTATION, MultiTaskOutputAdversary, minmax_normalise, self_information

__all__ = ["ADAPTATION", "MultiTaskOutputAdversary", "minmax_normalise", "self_information"]
