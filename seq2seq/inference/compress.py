"""Smaller, faster copies of a model for inference: int8 linear layers, bf16 weights.

The trained model is never changed: each function returns a copy, so the weights a
run saves stay the fp32 ones it trained.
"""

from __future__ import annotations

import copy
import warnings

import torch

from seq2seq.config import DecodeConfig
from seq2seq.devices import resolve_precision
from seq2seq.errors import ConfigError
from seq2seq.models.transformer import FeedForward


def for_inference(model: torch.nn.Module, decode: DecodeConfig) -> torch.nn.Module:
    """The model as ``decode`` asks to run it: as is, int8-quantized, or in bf16
    (``precision: auto``: where the device computes bf16 natively).

    Raises:
        ConfigError: int8 asked for on a model that is not on the CPU.
    """
    device = next(model.parameters()).device
    if decode.quantize == "int8":
        if device.type != "cpu":
            raise ConfigError("decode.quantize: int8 runs on the CPU only (use --device cpu)")
        return quantize_int8(model)
    if resolve_precision(device, decode.precision, "decode.precision") == "bf16":
        return copy.deepcopy(model).to(torch.bfloat16)
    return model


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 quantization of every linear layer (weights int8, activations
    quantized on the fly; fbgemm's kernels), for CPU inference, each Transformer
    feed-forward ReLU fused into the product before it. Embeddings and layer norms stay
    fp32.

    ``torch.ao.quantization`` is deprecated upstream in favour of torchao, but torchao's
    eager int8 dynamic linear (0.18) ran 2-7x slower than these kernels on the CPU.
    """
    try:
        import torch.ao.nn.intrinsic as fused
        from torch.ao.quantization import fuse_modules, quantize_dynamic
    except ImportError:  # pragma: no cover - depends on the PyTorch build
        raise ConfigError(
            "decode.quantize: int8 needs torch.ao.quantization, which this PyTorch lacks"
        ) from None
    pairs = [
        [f"{name}.inner", f"{name}.act"]
        for name, module in model.named_modules()
        if isinstance(module, FeedForward)
    ]
    with warnings.catch_warnings():  # deprecated upstream in favour of torchao
        warnings.simplefilter("ignore")
        copied = fuse_modules(model, pairs) if pairs else copy.deepcopy(model)
        return quantize_dynamic(
            copied, {torch.nn.Linear, fused.LinearReLU}, dtype=torch.qint8, inplace=True
        )
