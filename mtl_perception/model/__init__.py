"""The slow-fast multi-task video network: config, registry of parts, streaming step."""

from .checkpoint import CheckpointError, load_model, save_model
from .config import ConfigError, DecoderConfig, EncoderConfig, ModelConfig, PropagationConfig
from .network import MultiTaskVideoNet, build_model
from .registry import DECODERS, ENCODERS, PROPAGATION
from .schedule import keyframe_flags
from .state import FrameMemory, StreamState

__all__ = [
    "DECODERS", "ENCODERS", "PROPAGATION", "CheckpointError", "ConfigError", "DecoderConfig",
    "EncoderConfig", "FrameMemory", "ModelConfig", "MultiTaskVideoNet", "PropagationConfig",
    "StreamState", "build_model", "keyframe_flags", "load_model", "save_model",
]
