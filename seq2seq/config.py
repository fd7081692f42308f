"""Configuration: YAML -> frozen, typed dataclasses.

A config has four sections (``data``, ``model``, ``train``, ``decode``). Every key is
checked: an unknown key is an error naming the closest valid one, and a wrong type or
an out-of-range value is an error naming its full dotted path. Paths resolve relative
to the config file. ``key.sub=value`` overrides from the command line are applied
before validation, so they are checked the same way.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from seq2seq.config_checks import conflicts, model_conflicts
from seq2seq.errors import ConfigError


def _opt(
    default: Any,
    *,
    lo: float | None = None,
    hi: float | None = None,
    path: bool = False,
    family: str | None = None,
):
    """A dataclass field with an optional numeric range, a 'resolve as path' flag, and the
    model family that alone uses it (``rnn`` or ``transformer``)."""
    return field(default=default, metadata={"lo": lo, "hi": hi, "path": path, "family": family})


@dataclass(frozen=True)
class TaskConfig:
    """One corpus of a multi-task or multilingual run (an entry of ``data.tasks``)."""

    name: str = ""  # the task's name: its <task:name> tag and its validation keys
    task: Literal["dates", "reverse", "sort", "addition"] | None = None  # built-in task data
    train: str | None = _opt(None, path=True)  # PREFIX, .tsv or .jsonl (or a built-in task)
    valid: str | None = _opt(None, path=True)  # its validation pairs, scored on their own
    test: str | None = _opt(None, path=True)  # its test pairs (Seq2Seq.evaluate default)
    src_lang: str | None = None  # file suffix of its source side; None: data.src_lang
    tgt_lang: str | None = None  # file suffix of its target side (and its <2xx> tag)
    weight: float = _opt(1.0, lo=0.0)  # share of the training examples (relative to the others)
    metric: Literal["bleu", "chrf", "rouge", "exact"] | None = None  # its validation score
    # (exact: exact match in %); None: train.early_stop_metric


@dataclass(frozen=True)
class DataConfig:
    """Where the text comes from and how it becomes token ids."""

    # built-in generated task (instead of files)
    task: Literal["dates", "reverse", "sort", "addition"] | None = None
    task_size: int = _opt(20000, lo=1)  # task training pairs; valid/test get 5% each
    task_seed: int = 1  # seed of the task generator
    train: str | None = _opt(None, path=True)  # PREFIX (PREFIX.src_lang/.tgt_lang), .tsv or .jsonl
    valid: str | None = _opt(None, path=True)  # validation pairs, same forms
    test: str | None = _opt(None, path=True)  # test pairs (Seq2Seq.evaluate default)
    src_lang: str = "src"  # file suffix of the source side
    tgt_lang: str = "tgt"  # file suffix of the target side
    tokenizer: Literal["char", "word", "sentencepiece"] = "sentencepiece"  # how text is split
    sp_model_type: Literal["bpe", "unigram"] = "bpe"  # SentencePiece algorithm
    sp_model: str | None = _opt(None, path=True)  # a pretrained .model to use as is
    vocab_size: int = _opt(8000, lo=8)  # SentencePiece size / word vocab cap
    joint_vocab: bool = False  # one tokenizer + vocabulary for both sides
    symbols: tuple[str, ...] = ()  # user-defined symbols (<eou>, <2de>): one piece, never split
    min_freq: int = _opt(1, lo=1)  # char/word: rarer pieces become <unk>
    max_len: int = _opt(100, lo=1)  # drop training pairs longer (tokens)
    max_src_len: int | None = _opt(None, lo=1)  # cut longer sources (tokens) instead
    max_tgt_len: int | None = _opt(None, lo=1)  # drop pairs with longer targets; None: max_len
    # records (JSONL with context/speaker/tgt_lang/task) and several corpora
    tasks: tuple[TaskConfig, ...] = ()  # several corpora in one model, mixed by weight
    dialogue_eou: str | None = None  # train/valid are files of whole dialogues, one a line,
    # each turn ending with this marker (DailyDialog: __eou__); every reply is a record
    context_turns: int = _opt(0, lo=0)  # a record's last turns kept (context + src); 0 = all
    turn_separator: str = "<eou>"  # the symbol between a record's turns
    speaker_tags: bool = False  # "speaker: text" for turns that name their speaker
    lang_tags: bool = False  # put <2xx> (the target language) before each source
    task_tags: bool = False  # put <task:name> before each source
    truncate: Literal["end", "oldest_turns"] = "end"  # over max_src_len: cut the end, or
    # drop whole turns oldest first (tags stay)
    # corpora larger than memory
    stream: Literal["auto", True, False] = "auto"  # read data.train as a stream into a
    # memory-mapped token cache; auto: when its files are over 1 GiB in all
    stream_sample: int = _opt(300000, lo=1)  # streamed: pairs the tokenizers are fitted on


@dataclass(frozen=True)
class ModelConfig:
    """The network. ``hidden_dim`` is the RNN state size, or the Transformer's d_model
    (whose embeddings have that size too: ``emb_dim`` is for RNNs only)."""

    arch: Literal["rnn", "transformer"] = "rnn"  # model family
    cell: Literal["gru", "lstm"] = _opt("gru", family="rnn")  # RNN: recurrent unit
    emb_dim: int = _opt(256, lo=1, family="rnn")  # RNN: embedding size
    hidden_dim: int = _opt(512, lo=1)  # RNN state / Transformer d_model
    enc_layers: int = _opt(1, lo=1)  # encoder layers
    dec_layers: int = _opt(1, lo=1)  # decoder layers
    bidirectional: bool = _opt(True, family="rnn")  # RNN: encoder reads both ways
    attention: Literal["none", "bahdanau", "luong"] = _opt("bahdanau", family="rnn")  # RNN
    attention_score: Literal["dot", "general"] = _opt("general", family="rnn")  # Luong score
    input_feeding: bool = _opt(True, family="rnn")  # Luong: feed h~ to the next step
    output_dim: int | None = _opt(None, lo=1, family="rnn")  # RNN with attention: size of
    # h~ = tanh(W [s; c]), the output layer's input; None: hidden_dim (structured pruning)
    dropout: float = _opt(0.2, lo=0.0, hi=0.99)  # dropout probability
    tie_embeddings: bool = False  # decoder embedding = output layer
    copy: bool = False  # pointer-generator: also copy source tokens (needs data.joint_vocab)
    coverage: bool = _opt(False, family="rnn")  # RNN: attention sees what it attended to
    share_embeddings: bool = _opt(False, family="transformer")  # src = tgt = output
    heads: int = _opt(4, lo=1, family="transformer")  # attention heads
    head_dim: int | None = _opt(None, lo=1, family="transformer")  # size of a head;
    # None: hidden_dim / heads (set by structured pruning, which keeps fewer heads)
    ff_dim: int = _opt(1024, lo=1, family="transformer")  # feed-forward size
    norm: Literal["pre", "post"] = _opt("pre", family="transformer")  # layer-norm placement
    positions: Literal["sinusoidal", "learned"] = _opt(
        "sinusoidal", family="transformer"
    )  # position encoding
    max_positions: int = _opt(1024, lo=1, family="transformer")  # longest sequence

    def __post_init__(self) -> None:
        for problem in model_conflicts(self):
            raise ConfigError(problem)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, schedule, validation and stopping."""

    seed: int = 1  # seeds init, data order and dropout
    batch_tokens: int = _opt(4096, lo=1)  # padded tokens per batch
    pool_batches: int = _opt(100, lo=1)  # batches per length-sorted pool
    optimizer: Literal["adam", "adamw"] = "adam"  # AdamW decouples weight decay
    lr: float = _opt(1e-3, lo=0.0)  # learning rate (noam: the peak)
    betas: tuple[float, float] = (0.9, 0.98)  # Adam betas
    weight_decay: float = _opt(0.0, lo=0.0)  # L2 / decoupled decay
    accumulate: int = _opt(1, lo=1)  # batches per update
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "fp32"  # auto: bf16 if native
    clip_grad_norm: float = _opt(1.0, lo=0.0)  # max gradient norm; 0 = off
    label_smoothing: float = _opt(0.1, lo=0.0, hi=0.99)  # mass spread over the vocabulary
    coverage_loss: float = _opt(0.0, lo=0.0)  # lambda of sum min(attention, coverage)
    schedule: Literal["constant", "noam", "plateau"] = "constant"  # learning-rate schedule
    warmup_steps: int = _opt(0, lo=0)  # linear warm-up steps
    plateau_factor: float = _opt(0.5, lo=0.0, hi=1.0)  # plateau: rate multiplier
    plateau_patience: int = _opt(2, lo=0)  # plateau: bad validations tolerated
    min_lr: float = _opt(1e-6, lo=0.0)  # floor of decaying schedules
    max_steps: int = _opt(100000, lo=1)  # stop after this many updates
    max_epochs: int = _opt(1000, lo=1)  # stop after this many epochs
    max_time: float | None = _opt(None, lo=0.0)  # stop after this many seconds
    valid_every: int = _opt(1000, lo=1)  # updates between validations
    valid_bleu: bool = True  # decode the valid set for BLEU (and chrF/ROUGE if early-stopped on)
    early_stop_metric: Literal["bleu", "chrf", "rouge", "loss"] = "loss"  # picks best.safetensors
    patience: int = _opt(0, lo=0)  # early stopping; 0 = off
    keep_checkpoints: int = _opt(5, lo=0)  # step-*.safetensors kept
    log_every: int = _opt(100, lo=1)  # updates between log lines
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when present
    threads: int = _opt(0, lo=0)  # CPU threads; 0 = PyTorch default
    dist_timeout: float = _opt(1800.0, lo=1.0)  # torchrun: seconds a rank waits for the others


@dataclass(frozen=True)
class DecodeConfig:
    """How text is generated at validation and inference time."""

    method: Literal["greedy", "beam", "sample"] = "greedy"  # search algorithm
    batch_tokens: int = _opt(8000, lo=1)  # source tokens x hypotheses per decoding batch
    max_len_a: float = _opt(1.5, lo=0.0)  # output limit: a * source length + b
    max_len_b: int = _opt(10, lo=0)  # see max_len_a
    min_len: int = _opt(0, lo=0)  # no EOS before this many output tokens
    beam_size: int = _opt(5, lo=1)  # beam: hypotheses kept per sentence
    n_best: int = _opt(1, lo=1)  # beam: outputs returned per sentence (<= beam_size)
    length_penalty: float = _opt(1.0, lo=0.0)  # beam: GNMT alpha; 0 = raw log-prob
    no_repeat_ngram: int = _opt(0, lo=0)  # never repeat an n-gram of this size; 0 = off
    banned: tuple[str, ...] = ()  # target tokens never generated (pieces)
    temperature: float = _opt(1.0, lo=1e-6)  # sample: divides the logits
    top_k: int = _opt(0, lo=0)  # sample: from the k most likely; 0 = all
    top_p: float = _opt(1.0, lo=1e-6, hi=1.0)  # sample: from the smallest set with mass p
    seed: int | None = None  # sample: random seed (None: a fresh draw each time)
    precision: Literal["fp32", "bf16", "auto"] = "fp32"  # inference arithmetic (bf16:
    # weights too; auto: bf16 where the device computes it natively, else fp32)
    quantize: Literal["none", "int8"] = "none"  # int8: dynamic quantization of linears (CPU)


@dataclass(frozen=True)
class PruneConfig:
    """How the run's model was pruned (written by ``seq2seq prune``, not by hand)."""

    method: Literal["none", "magnitude", "structured"] = "none"  # magnitude: its zeros
    # stay zero while fine-tuning; structured: fewer heads and neurons (see model)
    sparsity: float = _opt(0.0, lo=0.0, hi=1.0)  # magnitude: share of weights zeroed
    scope: Literal["global", "layer"] = "global"  # magnitude: ranked together or per matrix
    source: str | None = None  # the run directory it was pruned from


@dataclass(frozen=True)
class Config:
    """A whole run: data, model, training and decoding settings."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)

    def __post_init__(self) -> None:
        for problem in conflicts(self):
            raise ConfigError(problem)

    def replace(self, **sections: Any) -> Config:
        """A validated copy with some keys changed: ``cfg.replace(train={"lr": 1e-4})``."""
        raw = to_dict(self)
        for name, updates in sections.items():
            raw.setdefault(name, {}).update(updates)
        return from_dict(raw)


# ---------------------------------------------------------------------------- parsing


def _closest(key: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else f"; valid keys: {', '.join(valid)}"


def _check_value(
    where: str, value: Any, hint: Any, meta: dict, base_dir: Path | None = None
) -> Any:
    """Validate (and lightly coerce) one value against its type hint and range; a
    dataclass hint is a nested mapping (``data.tasks`` entries)."""
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else _build_section(hint, where, value, base_dir)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        inner = [o for o in options if o is not type(None)]
        return _check_value(where, value, inner[0] if len(inner) == 1 else inner, meta, base_dir)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin is tuple and typing.get_args(hint)[-1] is Ellipsis:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        kind = typing.get_args(hint)[0]
        return tuple(
            _check_value(f"{where}[{i}]", v, kind, meta, base_dir) for i, v in enumerate(value)
        )
    if origin is tuple:
        kinds = typing.get_args(hint)
        if not isinstance(value, (list, tuple)) or len(value) != len(kinds):
            raise ConfigError(f"{where}: expected a list of {len(kinds)} values, got {value!r}")
        return tuple(
            _check_value(f"{where}[{i}]", v, k, meta)
            for i, (v, k) in enumerate(zip(value, kinds, strict=True))
        )
    return _check_scalar(where, value, hint, meta)


def _check_scalar(where: str, value: Any, hint: type, meta: dict) -> Any:
    if hint is float and isinstance(value, str):
        # YAML 1.1 reads "1e-4" (no dot) as a string; accept what a user means.
        try:
            value = float(value)
        except ValueError:
            pass
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if hint is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, hint) or (hint is not bool and isinstance(value, bool)):
        raise ConfigError(
            f"{where}: expected {hint.__name__}, got {type(value).__name__} {value!r}"
        )
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and value < lo:
        raise ConfigError(f"{where}: {value!r} is below the minimum {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"{where}: {value!r} is above the maximum {hi}")
    return value


def _build_section(cls: type, name: str, raw: Any, base_dir: Path | None) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: expected a mapping of keys, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in fields:
            raise ConfigError(
                f"unknown config key '{name}.{key}'{_closest(str(key), list(fields))}"
            )
        meta = dict(fields[key].metadata)
        value = _check_value(f"{name}.{key}", value, hints[key], meta, base_dir)
        if meta.get("path") and value is not None and base_dir is not None:
            value = str((base_dir / Path(value).expanduser()).resolve())
        values[key] = value
    return cls(**values)


def from_dict(raw: dict, base_dir: Path | None = None) -> Config:
    """Build a validated :class:`Config` from nested dicts.

    Args:
        raw: ``{"data": {...}, "model": {...}, ...}``; missing keys take defaults.
        base_dir: directory relative paths resolve against (the config file's), or None.

    Raises:
        ConfigError: naming the offending key path.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(raw).__name__}")
    sections = {f.name: f.type for f in dataclasses.fields(Config)}
    hints = typing.get_type_hints(Config)
    for key in raw:
        if key not in sections:
            raise ConfigError(f"unknown config section '{key}'{_closest(str(key), list(sections))}")
    built = {k: _build_section(hints[k], k, raw.get(k), base_dir) for k in sections}
    return Config(**built)


def to_dict(cfg: Config) -> dict:
    """The plain nested-dict form of a config (tuples become lists), ready for YAML."""
    raw = dataclasses.asdict(cfg)
    for section in raw.values():
        for key, value in section.items():
            if isinstance(value, tuple):
                section[key] = list(value)
    return raw


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings to a raw config dict (values parsed as YAML).

    Raises:
        ConfigError: for an override that is not of the form ``section.key=value``.
    """
    for item in overrides:
        dotted, sep, text = item.partition("=")
        parts = dotted.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise ConfigError(f"override '{item}' is not of the form section.key=value")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"override '{item}': cannot parse the value ({err})") from None
        if raw.get(parts[0]) is None:  # absent, or left empty in the YAML file
            raw[parts[0]] = {}
        section = raw[parts[0]]
        if not isinstance(section, dict):
            raise ConfigError(f"override '{item}': '{parts[0]}' is not a section")
        section[parts[1]] = _cwd_path(parts[0], parts[1], value)
    return raw


def _cwd_path(section: str, key: str, value: Any) -> Any:
    """A relative path typed on the command line means one relative to where it was typed."""
    cls = typing.get_type_hints(Config).get(section)
    fields = {f.name: f for f in dataclasses.fields(cls)} if cls else {}
    if key in fields and fields[key].metadata.get("path") and isinstance(value, str):
        return str(Path(value).expanduser().resolve())
    return value


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Read a YAML config file (or start from defaults when ``path`` is None).

    Relative paths in the file resolve against the file's directory; relative paths in
    overrides (typed on a command line) against the current directory.

    Raises:
        ConfigError: a missing file, invalid YAML, or any invalid key or value.
    """
    raw: dict = {}
    base = Path.cwd()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError, OSError) as err:
            raise ConfigError(f"{path}: not a valid YAML file ({err})") from None
        base = path.resolve().parent
    return from_dict(apply_overrides(raw, list(overrides)), base_dir=base)


def save_config(cfg: Config, path: Path) -> None:
    """Write the resolved config as YAML."""
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")


def dump_config(cfg: Config) -> str:
    """The resolved config as a YAML string (stored inside checkpoints)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def parse_config(text: str, origin: str) -> Config:
    """Parse a resolved config stored as YAML text; ``origin`` names it in errors."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{origin}: not a valid YAML config ({err})") from None
    return from_dict(raw)
