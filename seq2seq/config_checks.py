"""Settings that are valid one by one but cannot go together, or that would be ignored.

:mod:`seq2seq.config` runs these checks whenever a config (or a model section) is
made, so a config is validated whole before any work starts: nothing is ignored
silently, and a model that cannot be built fails when its YAML is read.
"""

from __future__ import annotations

import dataclasses
from typing import Any

# The checks read the config's sections by attribute (they take a ModelConfig or a
# Config), so that this module needs nothing from seq2seq.config, which calls it.

_FAMILY = {"rnn": "the recurrent model", "transformer": "the Transformer"}


def model_conflicts(model: Any) -> list[str]:
    """Model settings that cannot be built, or that the chosen family would ignore."""
    problems = [
        f"model.{f.name}: {_FAMILY[f.metadata['family']]} alone uses it, but model.arch is "
        f"{model.arch!r}; remove the key (it would be ignored)"
        for f in dataclasses.fields(model)
        if f.metadata.get("family") not in (None, model.arch)
        and getattr(model, f.name) != f.default
    ]
    if model.arch == "transformer":
        checks = [
            (
                model.head_dim is None and model.hidden_dim % model.heads != 0,
                f"model.hidden_dim: {model.hidden_dim} is not divisible by "
                f"model.heads={model.heads}",
            ),
        ]
    else:
        checks = [
            (
                model.bidirectional and model.hidden_dim % 2 != 0,
                "model.hidden_dim: a bidirectional encoder needs an even size, "
                f"got {model.hidden_dim}",
            ),
            (
                model.tie_embeddings and model.emb_dim != (model.output_dim or model.hidden_dim),
                "model.tie_embeddings: the decoder's embedding and output layer can only share "
                "weights when model.emb_dim == model.hidden_dim (model.output_dim if set) "
                f"(got {model.emb_dim} and {model.output_dim or model.hidden_dim})",
            ),
            (
                model.output_dim is not None and model.attention == "none",
                "model.output_dim: the attentional layer h~ exists with attention only; "
                "set model.attention or remove the key",
            ),
            (
                model.coverage and model.attention != "bahdanau",
                "model.coverage: the coverage vector enters the score of additive attention; "
                f"set model.attention to bahdanau (it is {model.attention!r})",
            ),
            (
                model.copy and model.attention == "none",
                "model.copy: the copy head copies through attention; set model.attention "
                "to bahdanau or luong",
            ),
            (
                model.attention != "luong" and model.attention_score != "general",
                f"model.attention_score: only Luong attention uses it, but model.attention is "
                f"{model.attention!r}; remove the key (it would be ignored)",
            ),
            (
                model.attention != "luong" and not model.input_feeding,
                f"model.input_feeding: only Luong attention uses it, but model.attention is "
                f"{model.attention!r}; remove the key (it would be ignored)",
            ),
        ]
    return problems + [message for failed, message in checks if failed]


def conflicts(cfg: Any) -> list[str]:
    """Settings that are valid one by one but contradict each other (none ignored silently)."""
    data, model, train, decode = cfg.data, cfg.model, cfg.train, cfg.decode
    bad_symbols = [s for s in data.symbols if not s or s != "".join(s.split())]
    separator = data.turn_separator
    checks = [
        *task_conflicts(data),
        (
            bool(bad_symbols),
            f"data.symbols: {bad_symbols} are empty or contain whitespace; a symbol is one "
            "piece such as <eou> or <2de>",
        ),
        (
            not separator or separator != "".join(separator.split()),
            f"data.turn_separator: {separator!r} is empty or contains whitespace; it is "
            "one symbol such as <eou>",
        ),
        (
            data.stream not in ("auto", False) and (data.tasks or data.task is not None),
            "data.stream: a stream reads one corpus, data.train; "
            + ("data.tasks are read into memory" if data.tasks else "a built-in task is generated")
            + " (remove data.stream or set it to auto)",
        ),
        (
            data.truncate == "oldest_turns" and data.max_src_len is None,
            "data.truncate: oldest_turns drops turns of sources over data.max_src_len; "
            "set data.max_src_len (or remove the key)",
        ),
        (
            model.copy and not data.joint_vocab,
            "model.copy: copying a source token needs it in the target vocabulary: set "
            "data.joint_vocab: true",
        ),
        (
            model.share_embeddings and not data.joint_vocab,
            "model.share_embeddings: encoder and decoder can share one embedding table only "
            "with a joint vocabulary (set data.joint_vocab: true)",
        ),
        (
            model.arch == "transformer" and data.max_len + 1 > model.max_positions,
            f"data.max_len={data.max_len} (+ EOS) exceeds model.max_positions="
            f"{model.max_positions}: raise model.max_positions or lower data.max_len",
        ),
        *(
            (
                model.arch == "transformer"
                and limit is not None
                and limit + 1 > model.max_positions,
                f"data.{key}={limit} (+ EOS) exceeds model.max_positions={model.max_positions}: "
                f"raise model.max_positions or lower data.{key}",
            )
            for key, limit in (("max_src_len", data.max_src_len), ("max_tgt_len", data.max_tgt_len))
        ),
        (
            train.early_stop_metric != "loss" and not train.valid_bleu,
            f"train.early_stop_metric: {train.early_stop_metric} decodes the valid set, which "
            "needs train.valid_bleu: true (or use loss)",
        ),
        (
            train.coverage_loss > 0 and not model.coverage,
            "train.coverage_loss: the coverage loss needs a coverage vector; set "
            "model.coverage: true (recurrent model with bahdanau attention) or remove the key",
        ),
        (
            data.sp_model is not None and data.tokenizer != "sentencepiece",
            f"data.sp_model is a SentencePiece model but data.tokenizer is {data.tokenizer!r}",
        ),
        (
            decode.n_best > decode.beam_size and decode.method == "beam",
            f"decode.n_best={decode.n_best} exceeds decode.beam_size={decode.beam_size}",
        ),
        (
            decode.quantize == "int8" and decode.precision == "bf16",
            "decode.quantize: int8 and decode.precision: bf16 exclude each other (pick one)",
        ),
        (
            decode.n_best > 1 and decode.method != "beam",
            f"decode.n_best={decode.n_best} needs decode.method: beam",
        ),
        (
            train.schedule == "noam" and train.warmup_steps == 0,
            "train.schedule: noam needs train.warmup_steps > 0 (its decay is relative to it)",
        ),
    ]
    return [message for failed, message in checks if failed]


def task_conflicts(data: Any) -> list[tuple[bool, str]]:
    """``data.tasks``: named, each with its data, and replacing the single-corpus keys."""
    if not data.tasks:
        return []
    names = [t.name for t in data.tasks]
    checks = [
        (
            any(getattr(data, key) is not None for key in ("task", "train", "valid", "test")),
            "data.tasks names every corpus: remove data.task, data.train, data.valid and "
            "data.test (each task has its own train, valid and test)",
        ),
        (
            len(set(names)) != len(names),
            f"data.tasks: the names {names} repeat; each task needs its own name",
        ),
        (
            sum(t.weight for t in data.tasks) <= 0,
            "data.tasks: every weight is 0; at least one task must be trained on",
        ),
    ]
    for i, t in enumerate(data.tasks):
        where = f"data.tasks[{i}]"
        checks += [
            (
                not t.name or t.name != "".join(t.name.split()),
                f"{where}.name: {t.name!r}: every task needs a name without whitespace",
            ),
            (
                (t.task is None) == (t.train is None),
                f"{where}: give exactly one of train (files) and task (built-in data)",
            ),
        ]
    return checks
