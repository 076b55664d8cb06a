"""The trainable parts of a model, by the names stages use (``slow``, ``fast``, ``decoders``,
``propagation``; :data:`training.config.PARTS`).

A cross-task decoder (DenseMTL's exchange block, MTI-Net's distillation/FPM, ASTMT's shared
decoder layers) lives in ``model.joint``, outside ``model.decoders``: it belongs to the
``decoders`` part, else no stage would ever update it. Submodules the joint module ties to one
encoder (``per_encoder()``: MTI-Net's pyramid adapters) go with that encoder's part, so the fast
stage trains the fast adapters together with the fast encoder that feeds them.
"""

from __future__ import annotations

from torch import nn

from mtl_perception.model import MultiTaskVideoNet


def model_parts(model: MultiTaskVideoNet) -> dict[str, nn.Module | None]:
    """Part name -> the module(s) it trains (None where the model has no such part)."""
    fast = [model.fast] if model.fast is not None else []
    parts: dict[str, list[nn.Module]] = {"slow": [model.slow], "fast": fast, "decoders": [model.decoders],
                                         "propagation": [model.propagation]}
    joint = model.joint
    if joint is not None:
        per_encoder = getattr(joint, "per_encoder", dict)()
        tied = {id(m) for m in per_encoder.values()}
        for enc, module in per_encoder.items():
            parts[enc].append(module)
        # the rest of the joint module: every child not tied to an encoder, nor holding one that is
        for child in joint.children():
            if id(child) in tied:
                continue
            if any(id(m) in tied for m in child.children()):
                parts["decoders"] += [m for m in child.children() if id(m) not in tied]
            else:
                parts["decoders"].append(child)
        parts["decoders"] += _own_parameters(joint)
    return {name: (mods[0] if len(mods) == 1 else nn.ModuleList(mods)) if mods else None
            for name, mods in parts.items()}


def _own_parameters(module: nn.Module) -> list[nn.Module]:
    """A joint module's parameters registered on itself (not in a child), wrapped as one module."""
    own = dict(module.named_parameters(recurse=False))
    if not own:
        return []
    return [nn.ParameterList(list(own.values()))]
