"""The Translator: raw text in, detokenized text out, through one loaded model.

``translate``, ``evaluate``, the Python API's ``predict`` and validation BLEU all go
through it: sentences are encoded, sorted by length and batched by tokens, decoded
with the configured search (greedy, beam or sampling), detokenized and returned in
input order. The model may be an ensemble of checkpoints, run in bf16, or have its
linear layers quantized to int8.
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from seq2seq.checkpoint import load_checkpoint, restore_model
from seq2seq.config import Config, DecodeConfig, from_dict, parse_config, to_dict
from seq2seq.data.batching import Examples, collate, token_batches
from seq2seq.data.prepare import load_codecs
from seq2seq.data.tokenizers import TextCodec
from seq2seq.data.vocab import BOS, EOS, PAD, UNK
from seq2seq.errors import CheckpointError, ConfigError
from seq2seq.models.build import build_model
from seq2seq.models.contract import Seq2SeqModel
from seq2seq.search import Ensemble, Hypothesis, Rules, beam_search, greedy, sample
from seq2seq.search import score as forced_score

CHECKPOINTS = ("best", "last", "averaged")
log = logging.getLogger("seq2seq")


@dataclass
class Translation:
    """One output: the text, its score, and (on request) attention with token labels.

    ``score`` is what the search ranked by (see :class:`~seq2seq.search.Hypothesis`);
    ``nbest`` holds every returned hypothesis as ``(text, score)``, best first.
    """

    text: str
    score: float
    src_tokens: list[str]
    out_tokens: list[str]
    attention: torch.Tensor | None = None  # [len(out_tokens), len(src_tokens)]
    nbest: list[tuple[str, float]] = field(default_factory=list)


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
        model: a model implementing the contract, or an :class:`~seq2seq.search.Ensemble`.
        src_codec, tgt_codec: tokenizer + vocabulary of each side.
        decode: search settings (method, beam, sampling, limits, precision, int8).

    Raises:
        ConfigError: a banned token that is not in the target vocabulary, or int8
            quantization asked for on a GPU.
    """

    def __init__(
        self,
        model,
        src_codec: TextCodec,
        tgt_codec: TextCodec,
        decode: DecodeConfig,
        prepared: torch.nn.Module | None = None,
    ):
        self.src_codec, self.tgt_codec, self.decode = src_codec, tgt_codec, decode
        self.base_model = model  # the weights as trained (saved by Seq2Seq.save)
        self.model = prepared if prepared is not None else _for_inference(model, decode)
        self.rules = Rules(
            bos=BOS,
            eos=EOS,
            max_len_a=decode.max_len_a,
            max_len_b=decode.max_len_b,
            min_len=decode.min_len,
            no_repeat_ngram=decode.no_repeat_ngram,
            banned=(PAD, BOS, *banned_ids(decode.banned, tgt_codec.vocab)),
        )
        self.generator: torch.Generator | None = None

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
        if not names:
            raise ConfigError("no checkpoint given")
        if names[0] in CHECKPOINTS:
            cfg, model, codecs = load_run(run_dir, names[0])
            models = [model]
        else:  # settings and tokenizers from run_dir; the weights may come from elsewhere
            cfg = _run_settings(run_dir)
            codecs = load_codecs(cfg.data, Path(run_dir))
            models = [_load_member(run_dir, names[0], codecs)]
        models += [_load_member(run_dir, name, codecs) for name in names[1:]]
        if decode:
            cfg = cfg.replace(decode=decode)
        joined = models[0] if len(models) == 1 else Ensemble(models)
        joined.to(pick_device(device)).eval()  # int8 on a GPU is refused by the constructor
        return cls(joined, *codecs, cfg.decode)

    def configure(self, **decode) -> Translator:
        """A Translator over the same weights with some decode settings changed,
        e.g. ``configure(method="beam", beam_size=5)``.

        Raises:
            ConfigError: an unknown or invalid setting.
        """
        if not decode:
            return self
        raw = {**to_dict(Config(decode=self.decode))["decode"], **decode}
        settings = from_dict({"decode": raw}).decode
        same = (settings.quantize, settings.precision) == (
            self.decode.quantize,
            self.decode.precision,
        )
        prepared = self.model if same else None  # int8/bf16 copies are made once
        return Translator(self.base_model, self.src_codec, self.tgt_codec, settings, prepared)

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
            for b in token_batches(Examples([examples.src[i] for i in real], []), self._budget())
        ]
        for index in tqdm(batches, disable=not progress, unit="batch", leave=False):
            src = collate(examples, index).src.to(self.device)
            for i, hyps in zip(index, self.search(src, attention), strict=True):
                results[i] = self._finish(examples.src[i], hyps)
        self.model.train(was_training)
        return results

    def _budget(self) -> int:
        """Source tokens per batch: a beam decodes ``beam_size`` rows per sentence."""
        size = self.decode.beam_size if self.decode.method == "beam" else 1
        return max(1, self.decode.batch_tokens // size)

    def search(self, src: torch.Tensor, attention: bool = False) -> list[list[Hypothesis]]:
        """Run the configured search on padded source ids; hypotheses per row, best first."""
        d = self.decode
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
        """One random stream per Translator: a seed makes a whole run reproducible."""
        if self.generator is None:
            self.generator = torch.Generator(device)
            if self.decode.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(self.decode.seed)
        return self.generator

    def _encode(self, text: str) -> list[int]:
        return encode_source(self.src_codec, text, self.model.max_positions)

    def _finish(self, src_ids: list[int], hyps: list[Hypothesis]) -> Translation:
        best = hyps[0]
        vocab_out = self.tgt_codec.vocab
        out_tokens = [vocab_out.piece(i) for i in best.tokens] + ["</s>"]
        src_tokens = [self.src_codec.vocab.piece(i) for i in src_ids] + ["</s>"]
        weights = best.attention
        if weights is not None:
            weights = weights[: len(out_tokens), : len(src_tokens)]
            out_tokens = out_tokens[: weights.size(0)]
        texts = [(self.tgt_codec.decode(h.tokens), h.score) for h in hyps]
        return Translation(texts[0][0], best.score, src_tokens, out_tokens, weights, texts)

    def score(self, sources: list[str], targets: list[str]) -> list[tuple[float, int]]:
        """Forced decoding: each pair's ``(log p(target | source), target tokens)``, the
        count including EOS, in input order. An empty source or target, or a target longer
        than the model's positions, gives ``(nan, 0)``.
        """
        src_ids = [self._encode(t) for t in sources]
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
        was_training = self.model.training
        self.model.eval()
        for index in token_batches(pairs, self.decode.batch_tokens):
            batch = collate(pairs, index)
            values = forced_score(
                self.model,
                batch.src.to(self.device),
                batch.tgt_in.to(self.device),
                batch.tgt_out.to(self.device),
            )
            for j, value in zip(index, values, strict=True):
                out[real[j]] = (value, len(pairs.tgt[j]) + 1)
        self.model.train(was_training)
        return out

    def __call__(self, texts: list[str]) -> list[str]:
        return [t.text for t in self.translate(texts)]


def banned_ids(pieces: tuple[str, ...], vocab) -> list[int]:
    """The ids of ``decode.banned`` pieces.

    Raises:
        ConfigError: a piece outside the vocabulary, or EOS (which ends every output).
    """
    ids = []
    for piece in pieces:
        index = vocab.index(piece)
        if index == UNK and piece != vocab.piece(UNK):
            raise ConfigError(f"decode.banned: {piece!r} is not in the target vocabulary")
        if index == EOS:
            raise ConfigError(f"decode.banned: {piece!r} ends every output; it cannot be banned")
        ids.append(index)
    return ids


def encode_source(codec: TextCodec, text: str, max_positions: int | None) -> list[int]:
    """Source ids of ``text`` (without EOS), cut with a warning to fit the model's positions."""
    ids = codec.encode(text)
    if max_positions is not None and len(ids) + 1 > max_positions:  # + EOS
        log.warning(
            "a source of %d tokens is cut to the model's %d positions", len(ids) + 1, max_positions
        )
        ids = ids[: max_positions - 1]
    return ids


def load_run(run_dir: str | Path, checkpoint: str = "best"):
    """Config, model (with weights) and codecs of a run directory.

    ``checkpoint`` is ``best`` (falls back to ``last`` when there is no best yet),
    ``last``, or a path to a ``.safetensors`` file.
    """
    run_dir = Path(run_dir)
    _run_config_file(run_dir)
    path = _checkpoint_path(run_dir, checkpoint)
    ckpt = load_checkpoint(path)
    cfg: Config = parse_config(ckpt.config_text, str(path))
    codecs = load_codecs(cfg.data, run_dir)
    model = build_model(cfg.model, len(codecs[0].vocab), len(codecs[1].vocab))
    restore_model(model, ckpt)
    return cfg, model, codecs


def _run_config_file(run_dir: str | Path) -> Path:
    """A run directory's ``config.yaml``.

    Raises:
        CheckpointError: the directory holds no run.
    """
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise CheckpointError(
            f"{run_dir}: not a run directory (no config.yaml); train one "
            "with 'seq2seq train CONFIG --out DIR'"
        )
    return path


def _run_settings(run_dir: str | Path) -> Config:
    """The resolved config a run directory was trained with (its ``config.yaml``)."""
    path = _run_config_file(run_dir)
    return parse_config(path.read_text(encoding="utf-8"), str(path))


def _load_member(run_dir: str | Path, checkpoint: str, codecs) -> Seq2SeqModel:
    """Another ensemble member: a checkpoint of ``run_dir`` (a name, or a file path), a
    checkpoint file inside another run directory, or another run directory (its best
    checkpoint). Its run's vocabularies must be those of ``run_dir``."""
    path = Path(checkpoint)
    if checkpoint in CHECKPOINTS:
        source, name = Path(run_dir), checkpoint
    elif path.is_dir():
        source, name = path, "best"
    else:  # a file: judged by the run directory it lies in, if any
        in_run = (path.parent / "config.yaml").is_file()
        source, name = (path.parent if in_run else Path(run_dir)), checkpoint
    _, model, (src_codec, tgt_codec) = load_run(source, name)
    if src_codec.vocab != codecs[0].vocab or tgt_codec.vocab != codecs[1].vocab:
        raise CheckpointError(
            f"{checkpoint}: its vocabularies (from {source}) differ from those of {run_dir}; "
            "ensemble members must share them"
        )
    return model


def _for_inference(model: torch.nn.Module, decode: DecodeConfig) -> torch.nn.Module:
    """The model as ``decode`` asks to run it: as is, int8-quantized, or in bf16.

    The given model is never changed: int8 and bf16 work on a copy.
    """
    if decode.quantize == "int8":
        if next(model.parameters()).device.type != "cpu":
            raise ConfigError("decode.quantize: int8 runs on the CPU only (use --device cpu)")
        return quantize_int8(model)
    if decode.precision == "bf16":
        return copy.deepcopy(model).to(torch.bfloat16)
    return model


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 quantization of every linear layer (weights int8, activations
    quantized on the fly), for CPU inference. Embeddings and layer norms stay fp32."""
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError:  # pragma: no cover - depends on the PyTorch build
        raise ConfigError(
            "decode.quantize: int8 needs torch.ao.quantization, which this PyTorch lacks"
        ) from None
    with warnings.catch_warnings():  # deprecated upstream in favour of torchao
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)  # a copy


def _checkpoint_path(run_dir: Path, checkpoint: str) -> Path:
    if checkpoint not in CHECKPOINTS:
        return Path(checkpoint)
    path = run_dir / f"{checkpoint}.safetensors"
    if checkpoint == "best" and not path.is_file():
        path = run_dir / "last.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: no checkpoint ({checkpoint}.safetensors) yet")
    return path
