"""The Translator: raw text in, detokenized text out, through one loaded model.

``translate``, ``evaluate``, the Python API's ``predict`` and validation BLEU all go
through it: sentences are encoded, sorted by length and batched by tokens, decoded
with the configured search, detokenized and returned in input order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from seq2seq.checkpoint import load_checkpoint, restore_model
from seq2seq.config import Config, DecodeConfig, parse_config
from seq2seq.data.batching import Examples, collate, token_batches
from seq2seq.data.prepare import load_codecs
from seq2seq.data.tokenizers import TextCodec
from seq2seq.data.vocab import BOS, EOS
from seq2seq.errors import CheckpointError, ConfigError
from seq2seq.models.build import build_model
from seq2seq.models.contract import Seq2SeqModel
from seq2seq.search import greedy

CHECKPOINTS = ("best", "last", "averaged")
log = logging.getLogger("seq2seq")


@dataclass
class Translation:
    """One output: the text, its score, and (on request) attention with token labels."""

    text: str
    score: float
    src_tokens: list[str]
    out_tokens: list[str]
    attention: torch.Tensor | None = None  # [len(out_tokens), len(src_tokens)]


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``.

    Raises:
        ConfigError: an unknown name, or ``cuda`` on a machine without it.
    """
    if name not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"unknown device {name!r}: use auto, cpu or cuda")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for, but this PyTorch build sees no CUDA GPU")
    return torch.device(name)


class Translator:
    """Decodes raw text with a model and the tokenizers it was trained with.

    Args:
        model: a model implementing the contract.
        src_codec, tgt_codec: tokenizer + vocabulary of each side.
        decode: search settings (length limits, batch size in tokens).
    """

    def __init__(
        self, model: Seq2SeqModel, src_codec: TextCodec, tgt_codec: TextCodec, decode: DecodeConfig
    ):
        self.model, self.src_codec, self.tgt_codec, self.decode = (
            model,
            src_codec,
            tgt_codec,
            decode,
        )

    @property
    def has_attention(self) -> bool:
        return self.model.has_attention

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @classmethod
    def from_run(
        cls, run_dir: str | Path, checkpoint: str = "best", device: str = "auto"
    ) -> Translator:
        """Load a run directory written by ``seq2seq train`` or ``Seq2Seq.save``.

        Raises:
            CheckpointError: the directory, a file in it, or the weights are unusable.
        """
        cfg, model, codecs = load_run(run_dir, checkpoint)
        model.to(pick_device(device)).eval()
        return cls(model, *codecs, cfg.decode)

    @torch.no_grad()
    def translate(
        self, texts: list[str], *, attention: bool = False, progress: bool = False
    ) -> list[Translation]:
        """Translate raw sentences; outputs come back in input order.

        Empty or whitespace-only inputs give empty outputs (line alignment is kept).
        """
        was_training = self.model.training
        self.model.eval()
        examples = Examples([self._encode(t) for t in texts], [])
        results = [Translation("", 0.0, [], []) for _ in texts]
        real = [i for i, t in enumerate(texts) if t.strip()]
        batches = [
            [real[j] for j in b]
            for b in token_batches(
                Examples([examples.src[i] for i in real], []), self.decode.batch_tokens
            )
        ]
        for index in tqdm(batches, disable=not progress, unit="batch", leave=False):
            src = collate(examples, index).src.to(self.device)
            hyps = greedy(
                self.model,
                src,
                bos=BOS,
                eos=EOS,
                max_len_a=self.decode.max_len_a,
                max_len_b=self.decode.max_len_b,
                keep_attention=attention,
            )
            for i, hyp in zip(index, hyps, strict=True):
                results[i] = self._finish(texts[i], examples.src[i], hyp)
        self.model.train(was_training)
        return results

    def _encode(self, text: str) -> list[int]:
        ids = self.src_codec.encode(text)
        limit = self.model.max_positions
        if limit is not None and len(ids) + 1 > limit:  # + EOS
            log.warning(
                "a source of %d tokens is cut to the model's %d positions", len(ids) + 1, limit
            )
            ids = ids[: limit - 1]
        return ids

    def _finish(self, text: str, src_ids: list[int], hyp) -> Translation:
        vocab_out = self.tgt_codec.vocab
        out_tokens = [vocab_out.piece(i) for i in hyp.tokens] + ["</s>"]
        src_tokens = [self.src_codec.vocab.piece(i) for i in src_ids] + ["</s>"]
        weights = hyp.attention
        if weights is not None:
            weights = weights[: len(out_tokens), : len(src_tokens)]
            out_tokens = out_tokens[: weights.size(0)]
        return Translation(
            self.tgt_codec.decode(hyp.tokens), hyp.score, src_tokens, out_tokens, weights
        )

    def __call__(self, texts: list[str]) -> list[str]:
        return [t.text for t in self.translate(texts)]


def load_run(run_dir: str | Path, checkpoint: str = "best"):
    """Config, model (with weights) and codecs of a run directory.

    ``checkpoint`` is ``best`` (falls back to ``last`` when there is no best yet),
    ``last``, or a path to a ``.safetensors`` file.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(
            f"{run_dir}: not a run directory (no config.yaml); train one "
            "with 'seq2seq train CONFIG --out DIR'"
        )
    path = _checkpoint_path(run_dir, checkpoint)
    ckpt = load_checkpoint(path)
    cfg: Config = parse_config(ckpt.config_text, str(path))
    codecs = load_codecs(cfg.data, run_dir)
    model = build_model(cfg.model, len(codecs[0].vocab), len(codecs[1].vocab))
    restore_model(model, ckpt)
    return cfg, model, codecs


def _checkpoint_path(run_dir: Path, checkpoint: str) -> Path:
    if checkpoint not in CHECKPOINTS:
        return Path(checkpoint)
    path = run_dir / f"{checkpoint}.safetensors"
    if checkpoint == "best" and not path.is_file():
        path = run_dir / "last.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: no checkpoint ({checkpoint}.safetensors) yet")
    return path
