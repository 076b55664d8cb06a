"""BF16 recipes (backends/bf16_backend.py): which module groups really run in BF16, the recipe
ladder and its fall back, the recorded recipe, and the quantize CLI's labelled gate form."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mtl_perception.backends import bf16_backend as bb
from mtl_perception.backends.calibration import labelled_clips_from_images
from mtl_perception.backends.cpu_choice import record_path, write_choice
from mtl_perception.backends.export import model_hash
from mtl_perception.backends.gates import GateMeter, Gates
from mtl_perception.backends.torch_backend import TorchBackend
from mtl_perception.model import load_model

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "mila_tiny_synthetic.pt"
SIZE = (64, 128)


@pytest.fixture(scope="module")
def model():
    return load_model(str(SHIPPED))[0]


def _clips(n: int = 2, t: int = 4, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (t, *SIZE, 3), dtype=np.uint8) for _ in range(n)]


def _watch(model, names):  # noqa: ANN001, ANN202
    """Output dtype of each named module per call (forward hooks), plus the handles."""
    seen: dict[str, list[torch.dtype]] = {n: [] for n in names}
    mods = dict(model.named_modules())
    def record(name: str, out: torch.Tensor | list[torch.Tensor]) -> None:
        # ILA's attend returns a list when it runs every task's products in one call
        seen[name].extend(o.dtype for o in (out if isinstance(out, list) else [out]))

    handles = [mods[n].register_forward_hook(lambda _m, _i, out, n=n: record(n, out)) for n in names]
    return seen, handles


def _stream(b, clip):  # noqa: ANN001, ANN202
    state = None
    for t, img in enumerate(clip):
        state = b.step(img, state, t % 2 == 0).state
    return state


# -- recipes --------------------------------------------------------------------------------------
def test_recipe_runs_the_named_groups_in_bf16_and_keeps_the_others_fp32(model):
    """force=True: emulated BF16 is slow but numerically the same, so this runs on any CPU."""
    enc = ["slow.backbone.layer1.0.conv1", "fast.backbone.conv1", "fast.backbone.layer2.0.conv2"]
    kept = ["slow.project.0", "fast.project.0"]  # inside the encoders, named FP32
    rest = ["propagation.semantic.h", "decoders.semantic.se.fc1", "decoders.depth.head.0.0",
            "decoders.normals.head.2"]  # outside every BF16 group
    seen, handles = _watch(model, enc + kept + rest)
    before = len(model.slow.project._forward_pre_hooks)
    b = bb.TorchBf16Backend(model, force=True, recipe=bb.Bf16Recipe("t", ("slow", "fast"), ("project",)))
    try:
        state = _stream(b, _clips(1)[0])
        for n in enc:
            assert seen[n] and set(seen[n]) == {torch.bfloat16}, n
        for n in kept + rest:
            assert seen[n] and set(seen[n]) == {torch.float32}, n
        # the stream state the next frame reads is FP32 (a BF16 group hands FP32 on)
        assert all(f.dtype == torch.float32 for f in state.keyframe.features.values())
        # hooks on the shared model act only inside this backend's step
        for v in seen.values():
            v.clear()
        with torch.inference_mode():
            model.step(torch.rand(1, 3, *SIZE), None, True)
        assert all(set(v) <= {torch.float32} for v in seen.values()) and seen[enc[0]]
    finally:
        b.close()
        for h in handles:
            h.remove()
    assert len(model.slow.project._forward_pre_hooks) == before  # close() removed them


def test_all_recipe_with_fp32_heads_and_ila_attention(model):
    watch = ["slow.backbone.layer1.0.conv1", "propagation.semantic.h", "decoders.semantic.se.fc1",
             "decoders.semantic.head.0.0", "decoders.semantic.head.2", "propagation.semantic.attend"]
    seen, handles = _watch(model, watch)
    r = bb.Bf16Recipe("t", (bb.ALL,), ("heads", "ila_attend"))
    b = bb.TorchBf16Backend(model, force=True, recipe=r)
    try:
        _stream(b, _clips(1)[0])
    finally:
        b.close()
        for h in handles:
            h.remove()
    assert set(seen["slow.backbone.layer1.0.conv1"]) == {torch.bfloat16}
    assert set(seen["propagation.semantic.h"]) == {torch.bfloat16}  # under "all", not kept
    assert set(seen["decoders.semantic.se.fc1"]) == {torch.bfloat16}
    assert set(seen["decoders.semantic.head.0.0"]) == {torch.float32}
    assert set(seen["decoders.semantic.head.2"]) == {torch.float32}
    # non-keyframes attend: the first stream's module runs every task's products in one call
    assert set(seen["propagation.semantic.attend"]) == {torch.float32}


def test_fp32_encoder_features_are_bit_identical_to_the_fp32_backend(model):
    """Recipe "slow": the fast encoder stays FP32, so its features equal PyTorch FP32's exactly,
    while the slow encoder's do not (a value check, next to the dtype checks above)."""
    feats: dict[str, list[torch.Tensor]] = {"slow": [], "fast": []}
    hs = [getattr(model, n).register_forward_hook(lambda _m, _i, o, n=n: feats[n].append(o.clone()))
          for n in feats]
    try:
        clip = _clips(1)[0]
        _stream(TorchBackend(model, "cpu"), clip)
        ref = {n: list(v) for n, v in feats.items()}
        for v in feats.values():
            v.clear()
        b = bb.TorchBf16Backend(model, force=True, recipe="slow")
        _stream(b, clip)
        b.close()
    finally:
        for h in hs:
            h.remove()
    assert all(torch.equal(a, c) for a, c in zip(ref["fast"], feats["fast"])) and ref["fast"]
    assert not any(torch.equal(a, c) for a, c in zip(ref["slow"], feats["slow"]))


def test_unknown_recipe_or_group_is_refused(model):
    with pytest.raises(Exception, match="unknown 'nope'"):
        bb.TorchBf16Backend(model, force=True, recipe="nope")
    with pytest.raises(ValueError, match="unknown group"):
        bb.TorchBf16Backend(model, force=True, recipe=bb.Bf16Recipe("x", ("slow",), ("tail",)))


# -- the ladder -----------------------------------------------------------------------------------
def test_ladder_falls_back_when_a_gate_is_impossible(model):
    clips = _clips(1)
    res = bb.best_bf16(model, clips, 2, recipes=bb.RECIPES[:2], gates=Gates(min_agreement=1.01), force=True)
    assert res.recipe is None and [t["recipe"] for t in res.tried] == [r.name for r in bb.RECIPES[:2]]
    assert res.reason.startswith("BF16 missed the gates with every recipe")
    assert all("semantic agreement" in t["failures"][0] for t in res.tried)
    loose = Gates(min_agreement=0.0, max_miou_drop=1.0, max_absrel_increase=1e9, max_normals_deg_increase=180)
    res = bb.best_bf16(model, clips, 2, recipes=bb.RECIPES[:2], gates=loose, force=True)
    assert res.recipe == bb.RECIPES[0] and len(res.tried) == 1


def test_ladder_returns_the_first_passing_recipe(model, monkeypatch):
    tried = []

    def fake(model, recipe, *a, **kw):  # noqa: ANN001, ANN202
        tried.append(recipe.name)
        m = GateMeter(2)
        ref = {"semantic": np.zeros((2, 2), np.int32)}
        m.add(ref, {"semantic": np.zeros((2, 2), np.int32) + (recipe.name != "b")})
        return m

    monkeypatch.setattr(bb, "measure_recipe", fake)
    recipes = [bb.Bf16Recipe(n, ("slow",)) for n in "abc"]
    res = bb.best_bf16(model, _clips(1, 2), 2, recipes=recipes, force=True)
    assert res.recipe is recipes[1] and tried == ["a", "b"]
    assert res.reason.startswith("recipe 2/3 b ")


def test_backend_runs_the_recorded_recipe(model, tmp_path):
    cand = {"torch-cpu": {"passed": True, "ms": 9.0, "why": ""},
            "torch-cpu-bf16": {"passed": True, "ms": 5.0, "why": "", "recipe": "pointwise"}}
    write_choice(model_hash(model), SIZE, tmp_path, cand, 5)
    b = bb.TorchBf16Backend(model, force=True, cache_dir=tmp_path)
    assert b.recipe.name == "pointwise" and "(recorded)" in b.reason
    b.close()
    cand["torch-cpu-bf16"]["passed"] = False  # a recipe that missed is never run from the record
    write_choice(model_hash(model), SIZE, tmp_path, cand, 5)
    b = bb.TorchBf16Backend(model, force=True, cache_dir=tmp_path)
    assert b.recipe.name == bb.DEFAULT_RECIPE and "(default)" in b.reason
    b.close()


def test_torch_bf16_through_create_backend_takes_the_recipe_from_the_record_read_once(
        model, tmp_path, monkeypatch):
    """select.py hands the backend the quantize record it read: the model is hashed once."""
    from mtl_perception.backends import cpu_choice, export
    from mtl_perception.backends.select import create_backend

    cand = {"torch-cpu": {"passed": True, "ms": 9.0, "why": ""},
            "torch-cpu-bf16": {"passed": True, "ms": 5.0, "why": "", "recipe": "pointwise-late"}}
    write_choice(model_hash(model), SIZE, tmp_path, cand, 5)
    hashed = []
    for mod in (cpu_choice, export):
        monkeypatch.setattr(mod, "model_hash", lambda m: hashed.append(1) or model_hash(m))
    monkeypatch.setattr(bb, "native_bf16", lambda: (True, "native BF16 (test)"))
    b, _ = create_backend(model, "torch-bf16", device="cpu", cache_dir=tmp_path)
    try:
        assert b.name == "torch-cpu-bf16" and b.active.recipe.name == "pointwise-late"
        assert "(recorded)" in b.active.reason and len(hashed) == 1
    finally:
        b.close()


# -- labelled gates in the quantize CLI ----------------------------------------------------------
def _generated(root: Path, clips: int = 3, frames: int = 4, size: tuple[int, int] = SIZE,
               sky_rows: int = 0) -> Path:
    """A folder in `mtl-data generate`'s format, written by its own writer (training.data.storage);
    ``sky_rows``: top rows without depth (invalid: their normals read as 0)."""
    from training.data import storage
    from training.data.classes import CLASSES

    rng = np.random.default_rng(1)
    h, w = size
    for c in range(clips):
        d = storage.clip_dir(root, c)
        for t in range(frames):
            n = rng.normal(size=(h, w, 3))
            depth = rng.uniform(1, 50, (h, w))
            depth[:sky_rows] = 0.0
            storage.write_frame(d, t, rng.random((h, w, 3)), rng.integers(0, len(CLASSES), (h, w)),
                                depth, n / np.linalg.norm(n, axis=-1, keepdims=True))
        storage.write_meta(d, {"seed": c}, CLASSES, np.eye(3), np.tile(np.eye(4), (frames, 1, 1)))
    return root


def test_labels_are_read_as_the_generator_stores_them(tmp_path):
    from training.data import storage

    root = _generated(tmp_path / "gen", clips=2, frames=3, sky_rows=4)
    clips, labels, classes = labelled_clips_from_images(root, SIZE, clip_len=3, max_frames=None)
    assert len(clips) == len(labels) == 2 and classes and classes[0] == "road"
    assert not labels[0][0]["normals"][:4].any() and labels[0][0]["normals"][4:].all()  # no depth: no normal
    for c, clip_dir in enumerate(storage.list_clips(root)):
        for t in range(3):
            want = storage.read_labels(clip_dir, t)
            for k in ("semantic", "depth", "normals"):
                np.testing.assert_array_equal(labels[c][t][k], want[k], err_msg=k)
            np.testing.assert_array_equal(clips[c][t], storage.read_rgb(clip_dir, t))
    # at another network size: nearest resize (PIL takes the pixel under each output centre)
    _, small, _ = labelled_clips_from_images(root, (32, 64), clip_len=3, max_frames=None)
    assert small[0][0]["semantic"].shape == (32, 64)
    np.testing.assert_array_equal(small[0][0]["semantic"], labels[0][0]["semantic"][1::2, 1::2])
    (storage.list_clips(root)[1] / "depth" / "000002.png").unlink()
    _, none, _ = labelled_clips_from_images(root, SIZE, clip_len=3, max_frames=None)
    assert none is None


def test_quantize_cli_gates_with_the_labels_of_a_generated_folder(model, tmp_path, monkeypatch, capsys):
    from mtl_perception.backends import quantize
    from mtl_perception.backends.quantize_cli import main
    from training.data import storage

    root = _generated(tmp_path / "gen")
    got = []

    def no_int8(model, calib, held, cache_dir, size, recipes, labels=None, **kw):  # noqa: ANN001, ANN202
        got.append((held, labels))
        return quantize.Int8Result({}, "fp32", "skipped in this test")

    monkeypatch.setattr(quantize, "ensure_best_int8", no_int8)
    cache = tmp_path / "cache"
    args = ["--checkpoint", str(SHIPPED), "--images", str(root), "--clip-len", "4", "--cache-dir", str(cache),
            "--bf16-recipe", "encoders"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "gates: labels (mIoU, abs-rel, angle vs ground truth" in out
    # the held-out clip (the last of three) with its ground truth, as the generator stored it
    held, labels = got[0]
    last = storage.list_clips(root)[2]
    np.testing.assert_array_equal(held[0][1], storage.read_rgb(last, 1))
    np.testing.assert_array_equal(labels[0][1]["depth"], storage.read_labels(last, 1)["depth"])
    native = bb.native_bf16()[0]

    def ref_metrics() -> list[dict]:
        rec = json.loads(record_path(model_hash(model), SIZE, cache).read_text())
        assert len({c["gate_form"] for c in rec["candidates"].values()}) == 1
        c = rec["candidates"]
        bf16 = [c["torch-cpu-bf16"]["tried"][0]["metrics"]] if native else []
        return [c["onnxruntime"]["metrics"], *bf16]

    rec = json.loads(record_path(model_hash(model), SIZE, cache).read_text())
    assert rec["candidates"]["torch-cpu"]["gate_form"].startswith("labels")
    # against random ground truth FP32 itself scores far from the strict form's 100 % / 0
    for m in ref_metrics():
        assert m["miou_ref"] < 0.5 and m["absrel_ref"] > 0.1
    assert main(args + ["--strict"]) == 0
    assert "gates: strict (FP32 outputs as labels): --strict" in capsys.readouterr().out
    for m in ref_metrics():
        assert m["miou_ref"] == 1.0 and m["absrel_ref"] == 0.0
    assert got[1][1] is None
    (storage.list_clips(root)[0] / "normals" / "000000.png").unlink()  # unlabelled now
    assert main(args) == 0
    assert "gates: strict (FP32 outputs as labels): no labels" in capsys.readouterr().out
