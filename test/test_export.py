"""ONNX export cache: files named by model hash + size, re-exported when the key or the file
does not match, and the ``mtl-perception-export`` CLI."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest
import torch

from mtl_perception.backends.export import (
    ensure_onnx,
    file_sha256,
    graph_spec,
    main,
    model_hash,
    onnx_filename,
)
from mtl_perception.model import ModelConfig, build_model

TINY = "config/model/tiny.yaml"


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "onnx_cache"  # shared with test_backends.py


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(ModelConfig.from_yaml(TINY)).eval()


def test_model_hash_follows_weights_and_config(model):
    h = model_hash(model)
    assert h == model_hash(model) and len(h) == 64
    other = build_model(ModelConfig.from_yaml(TINY))
    assert model_hash(other) != h  # different random weights
    assert onnx_filename(h, (64, 128), True) == f"mtl_{h[:16]}_64x128_key.onnx"


def test_graph_has_state_io_and_static_shapes(model, onnx_cache):
    art = ensure_onnx(model, False, onnx_cache)
    g = onnx.load(str(art.path))
    assert max(o.version for o in g.opset_import if o.domain in ("", "ai.onnx")) >= 17
    spec = graph_spec(model, False)
    ins = [i.name for i in g.graph.input]
    assert ins[0] == "image" and set(ins) <= set(spec.input_names)
    assert "key.features.depth" in ins and "nonkey.keys.semantic" in ins and "key.weight" in ins
    assert [o.name for o in g.graph.output] == spec.output_names
    for i in g.graph.input:
        assert all(d.dim_value > 0 for d in i.type.tensor_type.shape.dim)  # no dynamic dims


def test_cache_hit_and_rejected_files(model, onnx_cache, tmp_path):
    ensure_onnx(model, True, onnx_cache)
    cache = tmp_path / "c"
    shutil.copytree(onnx_cache, cache)
    art = ensure_onnx(model, True, cache)
    mtime = art.path.stat().st_mtime_ns
    assert ensure_onnx(model, True, cache).path.stat().st_mtime_ns == mtime  # hit, no export
    # A truncated file (e.g. a kill mid-copy) no longer matches its sidecar: exported again.
    data = art.path.read_bytes()
    art.path.write_bytes(data[: len(data) // 2])
    again = ensure_onnx(model, True, cache)
    assert file_sha256(again.path) == again.sha256 == art.sha256  # deterministic export
    # A sidecar for another size does not vouch for this file either.
    side = again.path.with_suffix(".json")
    meta = json.loads(side.read_text())
    side.write_text(json.dumps({**meta, "input_size": [32, 32]}))
    mtime = again.path.stat().st_mtime_ns
    assert ensure_onnx(model, True, cache).path.stat().st_mtime_ns != mtime


def test_export_cli_uses_the_cache(model, onnx_cache, tmp_path, capsys):
    ensure_onnx(model, True, onnx_cache)
    ensure_onnx(model, False, onnx_cache)
    torch.manual_seed(0)  # the CLI builds --model-config with seed 0, like the fixture
    assert main(["--model-config", TINY, "--size", "64x128", "--cache-dir", str(onnx_cache)]) == 0
    out = capsys.readouterr().out.splitlines()
    h = model_hash(model)[:16]
    assert [line.split()[0].rsplit("/", 1)[1] for line in out] == [
        f"mtl_{h}_64x128_key.onnx", f"mtl_{h}_64x128_nonkey.onnx"]
    with pytest.raises(SystemExit):
        main(["--model-config", TINY, "--size", "65x128"])
