"""The native Translator: raw text in, detokenized text out, through one loaded model.

``translate``, ``evaluate``, the Python API's ``predict`` and validation BLEU all go
through it: sentences are encoded, sorted by length and batched by tokens, decoded
with the configured search (greedy, beam or sampling), detokenized and returned in
input order (see :mod:`seq2seq.inference.engine` for the phases). The model may be an
ensemble of checkpoints, run in bf16, or have its linear layers quantized to int8.

A Translator never changes its model's state while decoding, so several threads may
decode with one Translator at once.
"""

from __future__ import annotations

import itertools
import logging
import random
from pathlib import Path

import torch

from seq2seq.config import DecodeConfig
from seq2seq.data.batching import Examples, collate, token_batches
from seq2seq.data.records import Rendering, SourceCut
from seq2seq.data.tokenizers import TextCodec
from seq2seq.data.vocab import BOS, EOS, PAD
from seq2seq.devices import keep_freed_cpu_memory, pick_device
from seq2seq.errors import ConfigError
from seq2seq.inference.compress import for_inference
from seq2seq.inference.engine import (
    Constraints,
    PhasedEngine,
    banned_ids,
    encode_source,
    revised,
)
from seq2seq.inference.loading import load_models
from seq2seq.models.contract import Decoder
from seq2seq.search import (
    Ensemble,
    Hypothesis,
    Rules,
    beam_search,
    constrained_beam_search,
    greedy,
    sample,
)
from seq2seq.search import score as forced_score

log = logging.getLogger("seq2seq")


class Translator(PhasedEngine):
    """Decodes raw text with a model and the tokenizers it was trained with.

    Args:
        model: a model implementing the contract, or an :class:`~seq2seq.search.Ensemble`;
            it is put in eval mode (dropout off) once, here.
        src_codec, tgt_codec: tokenizer + vocabulary of each side.
        decode: search settings (method, beam, sampling, limits, precision, int8).
        prepared: the inference copy of ``model`` for ``decode`` when one exists already.
        cut: how sources are cut, as in training (``data.max_src_len``, ``data.truncate``).
        rendering: how :meth:`render` tags raw texts (the run's ``data`` keys); the plain
            rendering for texts rendered already (validation).

    Raises:
        ConfigError: a banned token that is not in the target vocabulary, or int8
            quantization asked for on a GPU.
    """

    def __init__(
        self,
        model: Decoder,
        src_codec: TextCodec,
        tgt_codec: TextCodec,
        decode: DecodeConfig,
        prepared: Decoder | None = None,
        *,
        cut: SourceCut | None = None,
        rendering: Rendering | None = None,
    ):
        self.src_codec, self.tgt_codec, self.decode = src_codec, tgt_codec, decode
        self.cut, self.rendering = cut, rendering or Rendering()
        self.base_model = model  # the weights as trained (saved by Seq2Seq.save)
        self.model = prepared if prepared is not None else for_inference(model.eval(), decode)
        if self.device.type == "cpu":  # each step's [rows, vocab] tensors reuse memory
            keep_freed_cpu_memory()
        self.rules = Rules(
            bos=BOS,
            eos=EOS,
            max_len_a=decode.max_len_a,
            max_len_b=decode.max_len_b,
            min_len=decode.min_len,
            no_repeat_ngram=decode.no_repeat_ngram,
            banned=(PAD, BOS, *banned_ids(decode.banned, tgt_codec.vocab)),
        )
        self._draws = itertools.count()  # sampling: the n-th decoded batch draws stream n

    @property
    def has_attention(self) -> bool:
        return self.model.has_attention

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @classmethod
    def from_run(
        cls,
        run_dir: str | Path,
        checkpoint: str | list[str] = "best",
        device: str = "auto",
        decode: dict | None = None,
    ) -> Translator:
        """Load a run directory written by ``seq2seq train`` or ``Seq2Seq.save``.

        Args:
            run_dir: the run (its config and tokenizers are used).
            checkpoint: ``best``/``last``/``averaged`` or a ``.safetensors`` path; a list
                of several decodes them as an ensemble (one target vocabulary).
            device: ``auto``, ``cpu`` or ``cuda``.
            decode: overrides of the run's ``decode`` section, e.g. ``{"method": "beam"}``.

        Raises:
            CheckpointError: the directory, a file in it, or the weights are unusable.
            ConfigError: an invalid decode override.
        """
        names = [checkpoint] if isinstance(checkpoint, str) else list(checkpoint)
        cfg, models, codecs = load_models(run_dir, names)
        if decode:
            cfg = cfg.replace(decode=decode)
        joined = models[0] if len(models) == 1 else Ensemble(models)
        joined.to(pick_device(device))  # int8 on a GPU is refused by the constructor
        cut = SourceCut.of(cfg.data, codecs[0])
        return cls(joined, *codecs, cfg.decode, cut=cut, rendering=Rendering.of(cfg.data))

    def configure(self, **decode) -> Translator:
        """A Translator over the same weights with some decode settings changed,
        e.g. ``configure(method="beam", beam_size=5)``.

        Raises:
            ConfigError: an unknown or invalid setting.
        """
        if not decode:
            return self
        settings = revised(self.decode, decode)
        same = (settings.quantize, settings.precision) == (
            self.decode.quantize,
            self.decode.precision,
        )
        prepared = self.model if same else None  # int8/bf16 copies are made once
        return Translator(
            self.base_model,
            self.src_codec,
            self.tgt_codec,
            settings,
            prepared,
            cut=self.cut,
            rendering=self.rendering,
        )

    # ------------------------------------------------------------------ the phases

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Source ids of each text (without EOS), cut to the model's positions."""
        limit = self.model.max_positions
        return [encode_source(self.src_codec, t, limit, self.cut) for t in texts]

    def batches(self, rows: list[list[int]]) -> list[list[int]]:
        """Length-sorted groups of row indices within ``decode.batch_tokens``."""
        size = self.decode.beam_size if self.decode.method == "beam" else 1
        return token_batches(Examples(rows, []), max(1, self.decode.batch_tokens // size))

    @torch.no_grad()
    def decode_batch(
        self, rows: list[list[int]], attention: bool = False, constraints: Constraints = None
    ) -> list[list[Hypothesis]]:
        """Run the configured search on non-empty source id rows; hypotheses per row, best
        first (every one containing its row's ``constraints``, target-id phrases)."""
        src = collate(Examples(rows, []), list(range(len(rows)))).src.to(self.device)
        return self.search(src, attention, constraints)

    # ------------------------------------------------------------------ search

    def search(
        self, src: torch.Tensor, attention: bool = False, constraints: Constraints = None
    ) -> list[list[Hypothesis]]:
        """Run the configured search on padded source ids; hypotheses per row, best first.

        Raises:
            ConfigError: constraints with another method than beam search, or that
                cannot fit a row's output length limit.
        """
        d = self.decode
        if constraints is not None and any(constraints):
            if d.method != "beam":
                raise ConfigError(
                    f"lexical constraints need beam search, not {d.method}: add --beam K "
                    "(decode.method: beam)"
                )
            try:
                return constrained_beam_search(
                    self.model,
                    src,
                    self.rules,
                    constraints,
                    beam_size=d.beam_size,
                    n_best=d.n_best,
                    alpha=d.length_penalty,
                    keep_attention=attention,
                )
            except ValueError as err:
                raise ConfigError(f"constraints: {err}") from None
        if d.method == "beam":
            return beam_search(
                self.model,
                src,
                self.rules,
                beam_size=d.beam_size,
                n_best=d.n_best,
                alpha=d.length_penalty,
                keep_attention=attention,
            )
        if d.method == "sample":
            hyps = sample(
                self.model,
                src,
                self.rules,
                temperature=d.temperature,
                top_k=d.top_k,
                top_p=d.top_p,
                generator=self._generator(src.device),
                keep_attention=attention,
            )
        else:
            hyps = greedy(self.model, src, self.rules, keep_attention=attention)
        return [[h] for h in hyps]

    def _generator(self, device: torch.device) -> torch.Generator:
        """The random stream of the next sampled batch, its own so threads never share one.

        With ``decode.seed`` the n-th batch a Translator samples draws from a stream
        fixed by (seed, n): a seed makes a whole run reproducible, and successive calls
        draw different samples.
        """
        generator = torch.Generator(device)
        n = next(self._draws)  # atomic: each batch gets its own number
        if self.decode.seed is None:
            generator.seed()
        elif n == 0:
            generator.manual_seed(self.decode.seed)
        else:
            generator.manual_seed(random.Random(f"{self.decode.seed}:{n}").getrandbits(63))
        return generator

    # ------------------------------------------------------------------ scoring

    def score(self, sources: list[str], targets: list[str]) -> list[tuple[float, int]]:
        """Forced decoding: each pair's ``(log p(target | source), target tokens)``, the
        count including EOS, in input order. An empty source or target, or a target longer
        than the model's positions, gives ``(nan, 0)``.
        """
        src_ids = self.encode(sources)
        tgt_ids = [self.tgt_codec.encode(t) for t in targets]
        limit = self.model.max_positions
        too_long = [i for i, t in enumerate(tgt_ids) if limit is not None and len(t) + 1 > limit]
        if too_long:
            log.warning(
                "%d targets exceed the model's %d positions and score nan (first: line %d)",
                len(too_long),
                limit,
                too_long[0] + 1,
            )
        skipped = set(too_long)
        real = [i for i, (s, t) in enumerate(zip(src_ids, tgt_ids, strict=True)) if s and t]
        real = [i for i in real if i not in skipped]
        out = [(float("nan"), 0)] * len(sources)
        pairs = Examples([src_ids[i] for i in real], [tgt_ids[i] for i in real])
        for index in token_batches(pairs, self.decode.batch_tokens):
            batch = collate(pairs, index).to(self.device)
            values = forced_score(self.model, batch.src, batch.tgt_in, batch.tgt_out)
            for j, value in zip(index, values, strict=True):
                out[real[j]] = (value, len(pairs.tgt[j]) + 1)
        return out
