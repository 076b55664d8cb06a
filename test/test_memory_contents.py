"""What the stream memory holds (MultiTaskVideoNet docstring): the frame's own SE-selected features
``f`` and their embedding ``h(f)``, never the fused features. Pinned on a hand-built three-frame
stream where every frame after the first has a past, so fused and un-fused differ."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mtl_perception.model import ModelConfig, build_model
from mtl_perception.model.ila import reference_local_attention

TINY = Path(__file__).resolve().parents[1] / "config" / "model" / "tiny.yaml"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(ModelConfig.from_yaml(TINY)).eval()


def _frames(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return [torch.rand(1, 3, 64, 128, generator=g) for _ in range(n)]


@torch.no_grad()
def test_memory_holds_unfused_features_and_their_embedding(model) -> None:
    a, b, c = _frames(3)
    _, s1 = model.step(a, None, True)  # keyframe, no past
    _, s2 = model.step(b, s1, False)  # non-keyframe fed by a
    _, s3 = model.step(c, s2, True)  # keyframe fed by b (multi_frame)
    window = model.cfg.propagation.window
    for t in model.tasks:
        dec, prop = model.decoders[t], model.propagation[t]
        fa = dec.select(model.encode(a, slow=True))
        fb = dec.select(model.encode(b, slow=False))
        fc = dec.select(model.encode(c, slow=True))
        for mem, f in ((s1.keyframe, fa), (s2.nonkey, fb), (s3.keyframe, fc)):
            torch.testing.assert_close(mem.features[t], f, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(mem.keys[t], prop.h(f), atol=1e-5, rtol=1e-5)
        # The stored b is not what b's decoder saw: the fused value (independent unfold ILA) differs.
        fused_b = (fb + reference_local_attention(prop.h(fb), prop.h(fa), fa, window)) / 2
        assert (fused_b - fb).abs().max() > 1e-3, t
        assert (s2.nonkey.features[t] - fused_b).abs().max() > 1e-3, t
    # The keyframe slot is replaced only by keyframes, the non-keyframe slot only by non-keyframes.
    assert s2.keyframe is s1.keyframe and s3.nonkey is s2.nonkey
    assert (s1.frames, s2.frames, s3.frames) == (1, 2, 3)
