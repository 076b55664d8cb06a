"""Inference backends: one ``step(image, state, is_keyframe)`` over PyTorch, ONNX Runtime, TensorRT."""

from .base import Backend, BackendError, StepResult

__all__ = ["Backend", "BackendError", "StepResult"]
