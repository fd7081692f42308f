"""Translate with a CTranslate2 export: an :class:`~seq2seq.inference.engine.Engine`.

:class:`CTranslate2Translator` reads a directory written by
:func:`seq2seq.inference.ct2.export_ctranslate2` and decodes with CTranslate2's CPU/GPU
runtime, using the run's own tokenizers: ``seq2seq translate EXPORT --engine ctranslate2``.
"""

from __future__ import annotations

import logging
import secrets
import threading
from pathlib import Path
from typing import Any

import torch

from seq2seq.config import DecodeConfig, parse_config
from seq2seq.data.prepare import load_codecs
from seq2seq.data.records import Rendering, SourceCut
from seq2seq.data.tokenizers import TextCodec
from seq2seq.data.vocab import BOS, EOS, PAD, SPECIALS
from seq2seq.devices import resolve_precision
from seq2seq.errors import CheckpointError, ConfigError
from seq2seq.inference.ct2.export import require_ctranslate2
from seq2seq.inference.engine import (
    Constraints,
    PhasedEngine,
    banned_ids,
    encode_source,
    revised,
)
from seq2seq.rundir import RunDir
from seq2seq.search import Hypothesis, Rules

log = logging.getLogger("seq2seq")


class CTranslate2Translator(PhasedEngine):
    """Translates raw text with a CTranslate2 export, like the native Translator.

    The same searches on another engine; what differs from native decoding:

    * arithmetic: CTranslate2's kernels and ``compute_type`` (by default the one the
      decode settings imply: int8, bf16 or fp32); in float32 the outputs equal native
      ones except at near-ties;
    * scores: CTranslate2 masks forbidden tokens (padding, BOS, ``decode.banned``, EOS
      before ``min_len``, repeated n-grams) before its softmax, so each token's
      log-probability is renormalized over the allowed ones, where native search sums
      the model's own log-probabilities. They differ by the masked probability mass:
      negligible for padding and BOS once a model is trained;
    * beam search ranks (and scores) by ``log_prob / length ** length_penalty``, with
      ``length`` counting the EOS, not by GNMT's ``((5 + length) / 6) ** alpha``, and
      with a nonzero penalty searches until ``beam_size`` hypotheses have finished;
      with ``length_penalty: 0`` both rank by the summed log-probability;
    * sampling filters alike (top-k, temperature, then top-p on the tempered
      distribution) but draws CTranslate2's random numbers: as natively, a seed makes a
      run reproducible (successive calls continue one random stream), but the samples
      differ from native ones. CTranslate2's seed is process-wide, so two sampling
      translators should not start drawing at the same time.

    The output limit ``floor(a * |src| + b)`` is exact per sentence: sentences are
    decoded in groups sharing one limit, since CTranslate2 takes one per call.

    Args:
        translator: a ``ctranslate2.Translator`` of an export.
        src_codec, tgt_codec: tokenizer + vocabulary of each side.
        decode: search settings.
        max_positions: the model's longest sequence (``model.max_positions``).
        cut: how sources are cut, as in training (``data.max_src_len``, ``data.truncate``).
        rendering: how :meth:`render` tags raw texts (the run's ``data`` keys).
    """

    def __init__(
        self,
        translator: Any,
        src_codec: TextCodec,
        tgt_codec: TextCodec,
        decode: DecodeConfig,
        max_positions: int,
        cut: SourceCut | None = None,
        rendering: Rendering | None = None,
    ):
        self.translator, self.src_codec, self.tgt_codec = translator, src_codec, tgt_codec
        self.decode, self.max_positions = decode, max_positions
        self.cut, self.rendering = cut, rendering or Rendering()
        self._banned = self._banned_pieces()
        self._seed: int | None = secrets.randbits(32) if decode.seed is None else decode.seed
        self._seed_lock = threading.Lock()

    @property
    def has_attention(self) -> bool:
        return True

    @classmethod
    def from_export(
        cls,
        export_dir: str | Path,
        decode: DecodeConfig | dict | None = None,
        device: str = "cpu",
        compute_type: str | None = None,
        threads: int = 0,
    ) -> CTranslate2Translator:
        """Load a directory written by :func:`export_ctranslate2`.

        Args:
            export_dir: the export.
            decode: search settings, or overrides of the exported run's ``decode``
                section (``{"method": "beam"}``); that section when None. Its
                ``precision`` and ``quantize`` are native settings: CTranslate2's
                arithmetic is ``compute_type``.
            device: ``cpu``, ``cuda`` or ``auto``.
            compute_type: CTranslate2's arithmetic: ``int8``, ``float32``, ``int8_float16``...;
                None follows the decode settings, as natively: ``int8`` for
                ``quantize: int8``, ``bfloat16`` for ``precision: bf16`` (and ``auto``
                where the device computes bf16 natively), else ``float32``.
            threads: CPU threads per translation; 0 lets CTranslate2 choose.

        Raises:
            CheckpointError: ``export_dir`` is not a usable export.
            ConfigError: ctranslate2 is missing, the device or compute type is unusable,
                or a banned piece is not in the target vocabulary.
        """
        ct2 = require_ctranslate2()
        export = RunDir(export_dir)
        if not export.ct2_model.is_file():
            raise CheckpointError(
                f"{export_dir}: not a CTranslate2 export (no {export.ct2_model.name}); create "
                "one with 'seq2seq export RUN_DIR OUT_DIR'"
            )
        cfg = _read_config(export.config_file)
        if not isinstance(decode, DecodeConfig):
            decode = cfg.replace(decode=decode).decode if decode else cfg.decode
        codecs = load_codecs(cfg.data, export)
        if compute_type is None:
            compute_type = compute_type_for(decode, device)
        translator = _load_translator(ct2, export.path, device, compute_type, threads)
        cut, rendering = SourceCut.of(cfg.data, codecs[0]), Rendering.of(cfg.data)
        return cls(translator, *codecs, decode, cfg.model.max_positions, cut, rendering)

    def configure(self, **decode) -> CTranslate2Translator:
        """A translator over the same CTranslate2 model with some search settings changed,
        e.g. ``configure(method="beam", beam_size=5)``.

        Raises:
            ConfigError: an unknown or invalid setting, or a change of ``precision`` or
                ``quantize``: the arithmetic is chosen when the model is loaded.
        """
        settings = revised(self.decode, decode)
        if (settings.precision, settings.quantize) != (self.decode.precision, self.decode.quantize):
            raise ConfigError(
                "the CTranslate2 engine's arithmetic is fixed when the export is loaded: "
                "load it again with --precision/--quantize instead"
            )
        if settings == self.decode:
            return self
        return CTranslate2Translator(
            self.translator,
            self.src_codec,
            self.tgt_codec,
            settings,
            self.max_positions,
            self.cut,
            self.rendering,
        )

    # ------------------------------------------------------------------ the phases

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Source ids of each text (without EOS), cut to the model's positions."""
        limit = self.max_positions
        return [encode_source(self.src_codec, t, limit, self.cut) for t in texts]

    def batches(self, rows: list[list[int]]) -> list[list[int]]:
        """All rows in one length-sorted call: CTranslate2 batches by tokens itself."""
        return [sorted(range(len(rows)), key=lambda i: len(rows[i]))] if rows else []

    def decode_batch(
        self, rows: list[list[int]], attention: bool = False, constraints: Constraints = None
    ) -> list[list[Hypothesis]]:
        """Decode non-empty source id rows in one ``translate_batch`` call (lexical
        ``constraints`` are the native engine's only: refused here).

        It runs under the longest row's output limit; outputs over their own limit are
        cut to it (and rescored), which is what greedy search would give. With
        ``attention``, the best hypothesis carries the last decoder layer's
        cross-attention (head average), ``[steps, source tokens + </s>]``.
        """
        if constraints is not None and any(constraints):
            raise ConfigError(
                "lexical constraints: the CTranslate2 engine has none; decode with the "
                "native engine (--engine native)"
            )
        self._seed_once()
        vocab = self.src_codec.vocab
        pieces = [[vocab.piece(i) for i in row] for row in rows]
        limits = self._limits([len(row) + 1 for row in rows])
        outputs = self._run(pieces, max(limits), self._options(attention))
        return [
            self._hypotheses(src, out, limit, attention)
            for src, out, limit in zip(pieces, outputs, limits, strict=True)
        ]

    # ------------------------------------------------------------------ steps

    def _banned_pieces(self) -> list[str]:
        """Padding and BOS, as natively, and ``decode.banned`` (checked as natively)."""
        vocab = self.tgt_codec.vocab
        banned = [vocab.piece(i) for i in banned_ids(self.decode.banned, vocab)]
        return list(dict.fromkeys([SPECIALS[PAD], SPECIALS[BOS], *banned]))

    def _limits(self, lengths: list[int]) -> list[int]:
        """Output limits ``floor(a * |src + EOS| + b)``, exactly as native search sets them."""
        d = self.decode
        rules = Rules(bos=BOS, eos=EOS, max_len_a=d.max_len_a, max_len_b=d.max_len_b)
        return rules.limits(torch.tensor(lengths), self.max_positions).tolist()

    def _seed_once(self) -> None:
        """Seed CTranslate2's sampling once: it seeds its worker thread's generator at the
        thread's first draw, from the process-wide seed; later calls continue that stream."""
        if self.decode.method != "sample":
            return
        with self._seed_lock:
            if self._seed is not None:
                require_ctranslate2().set_random_seed(self._seed % 2**32)
                self._seed = None

    def _hypotheses(self, src: list[str], out: Any, limit: int, attention: bool):
        """One result's hypotheses as target ids (EOS dropped), best first."""
        hyps, scores, weights = self._cut(src, out, limit, attention)
        vocab = self.tgt_codec.vocab
        found = []
        for j, (pieces, score) in enumerate(zip(hyps, scores, strict=True)):
            attn = None
            if j == 0 and weights is not None:  # steps: EOS included when produced
                attn = _with_eos_column(weights, len(pieces), len(src))
            if pieces and pieces[-1] == SPECIALS[EOS]:
                pieces = pieces[:-1]
            found.append(Hypothesis([vocab.index(p) for p in pieces], score, score, attn))
        return found

    def _cut(self, src: list[str], out: Any, limit: int, attention: bool):
        """Hypotheses, scores and attention of one result, cut to the sentence's limit
        (tokens beyond it are rescored by forced decoding, without them)."""
        hyps, scores = [list(h) for h in out.hypotheses], [float(x) for x in out.scores]
        weights = out.attention[0] if attention else None
        over = [j for j, h in enumerate(hyps) if len(h) > limit]
        if over:
            for j in over:
                hyps[j] = hyps[j][:limit]
            rescored = self.translator.score_batch([src] * len(over), [hyps[j] for j in over])
            for j, result in zip(over, rescored, strict=True):
                scores[j] = float(sum(result.log_probs[:-1]))  # without the EOS it appends
            if weights is not None and 0 in over:
                weights = weights[:limit]
        return hyps, scores, weights

    def _options(self, attention: bool) -> dict[str, Any]:
        """``translate_batch`` keywords for this translator's search settings."""
        d = self.decode
        options: dict[str, Any] = {
            "max_batch_size": d.batch_tokens,
            "batch_type": "tokens",
            "max_input_length": 0,  # sources are cut to the model's positions in _pieces
            "return_scores": True,
            "return_end_token": True,  # so EOS gets its attention row, as natively
            "return_attention": attention,
            "no_repeat_ngram_size": d.no_repeat_ngram,
            "suppress_sequences": [[piece] for piece in self._banned],
            "beam_size": 1,
            "length_penalty": 0.0,  # greedy and sampling: the plain sum of log-probs
        }
        if d.method == "beam":
            options.update(
                beam_size=d.beam_size, num_hypotheses=d.n_best, length_penalty=d.length_penalty
            )
            if attention:  # CTranslate2 4.8 mixes up the first attention row across a batch
                options.update(max_batch_size=1, batch_type="examples")
        elif d.method == "sample":
            options.update(
                sampling_topk=d.top_k,  # 0: the whole vocabulary, as natively
                sampling_topp=d.top_p,
                sampling_temperature=d.temperature,
            )
        return options

    def _run(self, batch: list[list[str]], limit: int, options: dict) -> list:
        try:
            return self.translator.translate_batch(
                batch,
                max_decoding_length=limit,
                min_decoding_length=min(self.decode.min_len, limit),
                **options,
            )
        except (RuntimeError, ValueError) as err:
            raise ConfigError(f"CTranslate2 cannot decode with these settings: {err}") from None


def compute_type_for(decode: DecodeConfig, device: str = "cpu") -> str:
    """CTranslate2's compute type for native decode settings (int8, bf16 or fp32;
    ``precision: auto`` is bf16 where ``device``, ``cpu``, ``cuda`` or ``auto``,
    computes it natively)."""
    if decode.quantize == "int8":
        return "int8"
    on_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    where = torch.device("cuda" if on_cuda else "cpu")
    precision = resolve_precision(where, decode.precision, "decode.precision")
    return "bfloat16" if precision == "bf16" else "float32"


def _with_eos_column(rows: list[list[float]], steps: int, src_len: int) -> torch.Tensor:
    """``[steps, src_len + 1]`` weights from CTranslate2's ``[steps, >= src_len]`` rows.

    CTranslate2 leaves out the column of the source EOS it adds itself; each row is a
    softmax over all source positions, so that column is what the others leave of 1.
    """
    weights = torch.tensor(rows, dtype=torch.float32).reshape(steps, -1)[:, :src_len]
    eos = (1.0 - weights.sum(1, keepdim=True)).clamp(min=0.0)
    return torch.cat([weights, eos], dim=1)


def _read_config(path: Path):
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"{path.parent}: an incomplete export (no {path.name})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: unreadable ({err})") from None
    return parse_config(text, str(path))


def _load_translator(ct2: Any, path: Path, device: str, compute_type: str, threads: int) -> Any:
    """``ctranslate2.Translator(path)``, its errors told as a user's mistakes."""
    if device == "cuda" and ct2.get_cuda_device_count() == 0:
        raise ConfigError("device 'cuda' was asked for, but CTranslate2 sees no CUDA GPU")
    try:
        return ct2.Translator(
            str(path), device=device, compute_type=compute_type, intra_threads=threads
        )
    except ValueError as err:  # an unknown device, or a compute type the machine lacks
        raise ConfigError(
            f"CTranslate2 on {device!r} with compute type {compute_type!r}: {err}"
        ) from None
    except RuntimeError as err:
        raise CheckpointError(f"{path}: CTranslate2 cannot load it: {err}") from None
