"""Export a trained Transformer to CTranslate2.

``export_ctranslate2`` maps every weight of a :class:`TransformerSeq2Seq` onto
CTranslate2's own ``TransformerSpec`` (fused query/key/value projections, the model's
own position table, its layer-norm epsilon, its vocabularies and special symbols) and
writes a self-contained directory: CTranslate2's ``model.bin``, ``config.json`` and
vocabulary, plus this run's ``config.yaml`` and tokenizer files.
:class:`~seq2seq.inference.ct2.CTranslate2Translator` decodes such a directory.

``ctranslate2`` is an optional dependency, imported only when used.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from seq2seq.config import dump_config
from seq2seq.data.vocab import BOS, EOS, SPECIALS, UNK
from seq2seq.errors import CheckpointError, ConfigError, DataError
from seq2seq.inference.loading import load_run
from seq2seq.models.transformer import (
    DecoderLayer,
    Embeddings,
    EncoderLayer,
    MultiHeadAttention,
    TransformerSeq2Seq,
)
from seq2seq.rundir import RunDir

log = logging.getLogger("seq2seq")


def require_ctranslate2() -> Any:
    """The ``ctranslate2`` module, or a ConfigError saying how to install it."""
    try:
        import ctranslate2
        import ctranslate2.specs  # noqa: F401  (the spec API is a lazily loaded submodule)
    except ImportError as err:
        raise ConfigError(
            f"CTranslate2 export and inference need the ctranslate2 package ({err}); "
            "install it with: pip install ctranslate2"
        ) from None
    return ctranslate2


# ---------------------------------------------------------------------------- export


def export_ctranslate2(run_dir: str | Path, out_dir: str | Path, checkpoint: str = "best") -> Path:
    """Convert a Transformer run into a self-contained CTranslate2 model directory.

    The weights are stored in float32; pick the arithmetic (e.g. ``int8``) when loading
    with :meth:`CTranslate2Translator.from_export`. The directory is built beside
    ``out_dir`` and renamed into place, so a failed export leaves nothing behind, and a
    previous export at ``out_dir`` is replaced only once the new one is complete.

    Args:
        run_dir: a run directory written by ``seq2seq train`` or ``Seq2Seq.save``.
        out_dir: the directory to write; it must be absent, empty or an earlier export.
        checkpoint: ``best``, ``last``, ``averaged`` or a ``.safetensors`` path.

    Returns:
        ``out_dir``.

    Raises:
        ConfigError: ctranslate2 is not installed, the run is not a Transformer (or has a
            copy head), or ``out_dir`` holds something other than an export.
        CheckpointError: the run directory or its checkpoint is unusable.
        DataError: ``out_dir`` cannot be written.
    """
    ct2 = require_ctranslate2()
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    _check_target(out_dir)
    cfg, model, (src_codec, tgt_codec) = load_run(run_dir, checkpoint)
    if not isinstance(model, TransformerSeq2Seq):
        raise ConfigError(
            f"{run_dir}: only Transformer runs can be exported to CTranslate2, but this run's "
            f"model.arch is {cfg.model.arch!r}"
        )
    if cfg.model.copy:
        raise ConfigError(
            f"{run_dir}: CTranslate2's Transformer has no copy head (model.copy: true); "
            "decode this run with the native engine"
        )
    spec = transformer_spec(ct2, model.eval(), src_codec.vocab.pieces, tgt_codec.vocab.pieces)

    def write(tmp: Path) -> None:
        spec.save(str(tmp))
        export = RunDir(tmp)
        export.config_file.write_text(dump_config(cfg), encoding="utf-8")
        RunDir(run_dir).copy_codecs(cfg.data.joint_vocab, export)

    _write_directory(out_dir, write)
    log.info("exported %s (%s checkpoint) to CTranslate2 at %s", run_dir, checkpoint, out_dir)
    return out_dir


def _check_target(out_dir: Path) -> None:
    """Refuse to replace a directory that is neither empty nor an earlier export."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not RunDir(out_dir).ct2_model.is_file():
        raise ConfigError(
            f"{out_dir}: not empty and not a CTranslate2 export; choose a new output directory"
        )


def _write_directory(out_dir: Path, write) -> None:
    """Call ``write(tmp_dir)`` on a directory beside ``out_dir``, then move it into place."""
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    except OSError as err:
        raise DataError(f"cannot create export directory {out_dir}: {err.strerror}") from None
    old = tmp.with_suffix(".old")
    try:
        write(tmp)
        if out_dir.exists():
            os.replace(out_dir, old)
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if old.exists():  # put the previous export back
                os.replace(old, out_dir)
            raise
    except OSError as err:
        raise DataError(f"cannot write export directory {out_dir}: {err}") from None
    finally:
        for leftover in (tmp, old):
            shutil.rmtree(leftover, ignore_errors=True)


def transformer_spec(
    ct2: Any, model: TransformerSeq2Seq, src_pieces: tuple[str, ...], tgt_pieces: tuple[str, ...]
) -> Any:
    """Build and validate the ``ctranslate2.specs.TransformerSpec`` of ``model``.

    Args:
        ct2: the ``ctranslate2`` module.
        model: the Transformer, weights loaded.
        src_pieces, tgt_pieces: each vocabulary's pieces in id order.

    Raises:
        CheckpointError: the model does not fit the spec (names what does not).
    """
    pre_norm = isinstance(model.enc_norm, nn.LayerNorm)
    attn = model.encoder[0].attn
    shape = {"pre_norm": pre_norm, "activation": ct2.specs.Activation.RELU}
    if attn.heads * attn.head_dim != model.src_embed.dim:  # structurally pruned: fewer heads
        shape["head_dim"] = attn.head_dim
    spec = ct2.specs.TransformerSpec(
        ct2.specs.TransformerEncoderSpec(len(model.encoder), attn.heads, **shape),
        ct2.specs.TransformerDecoderSpec(
            len(model.decoder),
            attn.heads,
            alignment_layer=-1,  # like the native decoder: the last layer's cross-attention,
            alignment_heads=0,  # averaged over all heads
            **shape,
        ),
    )
    _set_encoder(spec.encoder, model)
    _set_decoder(spec.decoder, model)
    spec.register_source_vocabulary(list(src_pieces))
    spec.register_target_vocabulary(list(tgt_pieces))
    _set_config(spec.config, model)
    try:
        spec.validate()
    except ValueError as err:
        raise CheckpointError(f"the model does not fit CTranslate2's Transformer: {err}") from None
    spec.optimize(quantization="float32")  # also stores shared (tied) weights once
    return spec


def _set_config(config: Any, model: TransformerSeq2Seq) -> None:
    """Special symbols as our vocabularies spell them; the source gets EOS, as in training."""
    epsilons = {m.eps for m in model.modules() if isinstance(m, nn.LayerNorm)}
    if len(epsilons) != 1:
        raise CheckpointError(f"the model's layer norms use several epsilons: {sorted(epsilons)}")
    config.layer_norm_epsilon = epsilons.pop()
    config.unk_token, config.bos_token = SPECIALS[UNK], SPECIALS[BOS]
    config.eos_token, config.decoder_start_token = SPECIALS[EOS], SPECIALS[BOS]
    config.add_source_bos, config.add_source_eos = False, True


def _set_encoder(spec: Any, model: TransformerSeq2Seq) -> None:
    _set_embeddings(spec, spec.embeddings[0], model.src_embed)
    layer: EncoderLayer
    for layer_spec, layer in zip(spec.layer, model.encoder, strict=True):
        _set_self_attention(layer_spec.self_attention, layer.attn, layer.sub[0].norm)
        _set_ffn(layer_spec.ffn, layer.ff, layer.sub[1].norm)
    if isinstance(model.enc_norm, nn.LayerNorm):  # post-norm stacks end in their last sublayer
        _set_layer_norm(spec.layer_norm, model.enc_norm)


def _set_decoder(spec: Any, model: TransformerSeq2Seq) -> None:
    _set_embeddings(spec, spec.embeddings, model.tgt_embed)
    layer: DecoderLayer
    for layer_spec, layer in zip(spec.layer, model.decoder, strict=True):
        _set_self_attention(layer_spec.self_attention, layer.self_attn, layer.sub[0].norm)
        _set_cross_attention(layer_spec.attention, layer.cross_attn, layer.sub[1].norm)
        _set_ffn(layer_spec.ffn, layer.ff, layer.sub[2].norm)
    if isinstance(model.dec_norm, nn.LayerNorm):
        _set_layer_norm(spec.layer_norm, model.dec_norm)
    _set_linear(spec.projection, model.out.weight, model.out.bias)  # the tied table, if tied


def _set_embeddings(side: Any, table: Any, embed: Embeddings) -> None:
    """Token table (scaled by sqrt(d) in CTranslate2 too) and our own position table.

    Our sinusoids interleave sin/cos per dimension pair where CTranslate2's built-in
    encoder concatenates them, so the table is always given explicitly.
    """
    table.weight = _array(embed.tokens.weight)
    side.scale_embeddings = True
    positions = embed.learned.weight if embed.learned is not None else embed.sinusoid
    side.position_encodings.encodings = _array(positions)  # [max_len, dim]


def _set_self_attention(spec: Any, attn: MultiHeadAttention, norm: nn.LayerNorm) -> None:
    """CTranslate2 fuses [q; k; v] into ``linear[0]``; ``linear[1]`` is the output."""
    weight = torch.cat([attn.q.weight, attn.kv.weight])
    bias = torch.cat([attn.q.bias, attn.kv.bias])
    _set_linear(spec.linear[0], weight, bias)
    _set_linear(spec.linear[1], attn.out.weight, attn.out.bias)
    _set_layer_norm(spec.layer_norm, norm)


def _set_cross_attention(spec: Any, attn: MultiHeadAttention, norm: nn.LayerNorm) -> None:
    """Queries in ``linear[0]``, fused [k; v] of the memory in ``linear[1]``, output last."""
    _set_linear(spec.linear[0], attn.q.weight, attn.q.bias)
    _set_linear(spec.linear[1], attn.kv.weight, attn.kv.bias)
    _set_linear(spec.linear[2], attn.out.weight, attn.out.bias)
    _set_layer_norm(spec.layer_norm, norm)


def _set_ffn(spec: Any, ff: nn.Module, norm: nn.LayerNorm) -> None:
    _set_linear(spec.linear_0, ff.inner.weight, ff.inner.bias)
    _set_linear(spec.linear_1, ff.outer.weight, ff.outer.bias)
    _set_layer_norm(spec.layer_norm, norm)


def _set_linear(spec: Any, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    spec.weight = _array(weight)  # [out, in], as nn.Linear stores it
    if bias is not None:
        spec.bias = _array(bias)


def _set_layer_norm(spec: Any, norm: nn.LayerNorm) -> None:
    spec.gamma, spec.beta = _array(norm.weight), _array(norm.bias)


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).contiguous().numpy().copy()
