"""quantize.FLOAT_GROUPS["stem"] must name the first convolution of every encoder family: the
ladder's conservative recipe keeps it float. Expectation independent of the regex: the first
Conv2d a backbone registers, turned into the ONNX node-name prefix torch.onnx gives it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from mtl_perception.backends.quantize import FLOAT_GROUPS
from mtl_perception.model import ModelConfig, build_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("cfg", ["tiny.yaml", "efflite_tiny.yaml"])
def test_stem_group_names_each_encoders_first_conv(cfg: str) -> None:
    model = build_model(ModelConfig.from_yaml(ROOT / "config/model" / cfg))
    stem = re.compile(FLOAT_GROUPS["stem"])
    for enc in ("slow", "fast"):
        convs = [n for n, m in model.named_modules()
                 if n.startswith(f"{enc}.backbone.") and isinstance(m, torch.nn.Conv2d)]
        first, rest = convs[0], convs[1:]
        assert stem.match("/" + first.replace(".", "/") + "/Conv"), (cfg, first)
        assert not any(stem.match("/" + n.replace(".", "/") + "/Conv") for n in rest), cfg
