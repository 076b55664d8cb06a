"""CPU feature detection for the reduced-precision backends, and ONNX Runtime's exact INT8 kernel
on CPUs whose u8 x s8 sums saturate (no VNNI)."""

from __future__ import annotations

import platform

import numpy as np
import pytest

from mtl_perception.backends import cpu_features
from mtl_perception.backends.cpu_features import (
    FAST,
    PRECISE,
    PRECISE_ENV,
    cpu_flags,
    cpu_model,
    int8_kernel,
    needs_precise_int8,
)


@pytest.fixture(autouse=True)
def _no_override(monkeypatch):
    monkeypatch.delenv(PRECISE_ENV, raising=False)


def test_cpu_flags_reads_the_first_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512_vnni\n\n"
                    "processor\t: 1\nmodel name\t: Other\nflags\t: fpu sse\n")
    assert cpu_flags(info) == {"fpu", "avx2", "avx512_vnni"}
    assert cpu_model(info) == "AMD EPYC"
    assert cpu_flags(tmp_path / "missing") == set()
    assert cpu_model(tmp_path / "missing") == (platform.processor() or platform.machine())


@pytest.mark.parametrize(("flags", "machine", "precise"), [
    ({"avx2", "avx512f", "avx512bw"}, "x86_64", True),  # AVX-512 without VNNI (Skylake-SP)
    ({"avx", "avx2", "fma"}, "x86_64", True),  # this session's EPYC: AVX2 only
    ({"avx2", "avx512f", "avx512_vnni"}, "x86_64", False),  # Zen 4, Cascade Lake and later
    ({"avx2", "avx_vnni"}, "AMD64", False),  # Alder Lake: VEX VNNI
    (set(), "x86_64", True),  # flags unreadable: the kernel that cannot saturate
    ({"asimd", "asimddp"}, "aarch64", False),  # ARM: no x86 16-bit saturation
])
def test_the_exact_int8_kernel_is_chosen_where_u8s8_sums_saturate(flags, machine, precise):
    assert needs_precise_int8(flags, machine)[0] is precise


def test_the_environment_overrides_the_detection(monkeypatch):
    monkeypatch.setenv(PRECISE_ENV, "1")
    assert needs_precise_int8({"avx512_vnni"}, "x86_64")[0] and int8_kernel() == PRECISE
    monkeypatch.setenv(PRECISE_ENV, "0")
    assert not needs_precise_int8(set(), "x86_64")[0] and int8_kernel() == FAST
    monkeypatch.setattr(cpu_features, "cpu_flags", lambda *_: {"avx2"})
    monkeypatch.setattr(cpu_features.platform, "machine", lambda: "x86_64")
    monkeypatch.setenv(PRECISE_ENV, "")
    assert int8_kernel() == PRECISE


def _saturating_matmul():
    """u8 255 x s8 +-127/-128 over 64 terms: each pair of products (|sum| up to 65 025) overflows
    the 16-bit lanes of AVX2's vpmaddubsw; the exact int32 result is hand-computable."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = np.where(rng.random((64, 8)) < 0.5, 127, -128).astype(np.int8)
    a = np.full((1, 64), 255, np.uint8)
    g = helper.make_graph([helper.make_node("MatMulInteger", ["a", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 8])],
                          [numpy_helper.from_array(w, "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    return model.SerializeToString(), a, a.astype(np.int64) @ w.astype(np.int64)


def test_backend_sessions_compute_int8_products_exactly_where_they_would_saturate(monkeypatch):
    """With the backend's session options an INT8 product is exact on every CPU (on one without
    VNNI only thanks to ``session.x64quantprecision``)."""
    ort = pytest.importorskip("onnxruntime")
    from mtl_perception.backends.ort_backend import session_options

    model, a, exact = _saturating_matmul()
    assert 255 * 127 * 2 > 2**15 - 1 and int(np.abs(exact).max()) > 2**15  # the case is real
    opts = session_options(1)
    y = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"]).run(None, {"a": a})[0]
    np.testing.assert_array_equal(y, exact)
    on = session_options(1, precise_int8=True)
    assert on.get_session_config_entry("session.x64quantprecision") == "1"
    with pytest.raises(RuntimeError):  # not set at all: ONNX Runtime's default kernel
        session_options(1, precise_int8=False).get_session_config_entry("session.x64quantprecision")
    monkeypatch.setenv(PRECISE_ENV, "1")
    assert session_options(1).get_session_config_entry("session.x64quantprecision") == "1"
