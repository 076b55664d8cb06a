"""Unsupervised domain adaptation methods (DenseMTL Sec. 4.5, App. B.3), registered by name.

The output-space adversaries (``output_adversary.py``), the ``adapt:`` config section
(``config.py``) and ``mtl-train``'s adaptation mode (``mode.py``, called by the Trainer);
docs/adaptation.md.
"""

from .output_adversary import ADAPTATION, MultiTaskOutputAdversary, minmax_normalise, self_information

__all__ = ["ADAPTATION", "MultiTaskOutputAdversary", "minmax_normalise", "self_information"]
