"""The TensorRT engine cache by behaviour, without TensorRT or a GPU: an engine cached under one
key is reused for exactly that key, and every input that changes what the builder would produce
(ONNX graph, input size, precision, TensorRT version, GPU model, compute capability) or a modified
engine file makes it stale, so it is rebuilt instead of trusted."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtl_perception.backends.export import check_sidecar, file_sha256, write_sidecar
from mtl_perception.backends.trt_backend import engine_key, engine_path

ARGS = {"onnx_sha256": "ab" * 32, "input_size": (256, 512), "precision": "fp16", "trt_version": "10.3.0",
        "gpu": {"gpu": "NVIDIA H100", "compute_capability": "9.0"}}
CHANGES = {
    "onnx_sha256": "cd" * 32,
    "input_size": (512, 1024),
    "precision": "fp32",
    "trt_version": "10.4.0",
    "gpu_name": {"gpu": "NVIDIA L4", "compute_capability": "9.0"},
    "compute_capability": {"gpu": "NVIDIA H100", "compute_capability": "8.9"},
}


def _key(**over):  # noqa: ANN202 - the engine key dict
    a = {**ARGS, **over}
    return engine_key(a["onnx_sha256"], a["input_size"], a["precision"], a["trt_version"], a["gpu"])


@pytest.fixture
def cached(tmp_path: Path) -> Path:
    """An engine file and its sidecar, written the way ensure_engine writes them."""
    key = _key()
    path = engine_path(tmp_path, tmp_path / "mtl_x_256x512_key.onnx", key)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"serialised engine")
    write_sidecar(path, {**key, "engine_sha256": file_sha256(path)})
    return path


def test_same_key_reuses_the_engine(cached: Path) -> None:
    meta, reason = check_sidecar(cached, _key(), "engine_sha256")
    assert reason == "ok" and meta is not None


@pytest.mark.parametrize("what", list(CHANGES))
def test_each_input_invalidates_the_engine(cached: Path, what: str) -> None:
    field = "gpu" if what in ("gpu_name", "compute_capability") else what
    meta, reason = check_sidecar(cached, _key(**{field: CHANGES[what]}), "engine_sha256")
    assert meta is None and reason != "ok", what


def test_modified_engine_file_is_stale(cached: Path) -> None:
    cached.write_bytes(b"truncated")
    meta, reason = check_sidecar(cached, _key(), "engine_sha256")
    assert meta is None and "hash" in reason
