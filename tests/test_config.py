"""Config: YAML files in a temp dir -> validated dataclasses, with errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from seq2seq.config import (
    Config,
    ModelConfig,
    TrainConfig,
    apply_overrides,
    dump_config,
    from_dict,
    load_config,
    parse_config,
    save_config,
    to_dict,
)
from seq2seq.errors import ConfigError, Seq2SeqError

REPO = Path(__file__).resolve().parent.parent


def _yaml(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _error(tmp_path: Path, text: str, overrides: list[str] = ()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(_yaml(tmp_path, text), overrides)
    return str(info.value)


# ---------------------------------------------------------------------------- loading


def test_load_yaml_file(tmp_path: Path) -> None:
    cfg = load_config(
        _yaml(
            tmp_path,
            "data:\n  task: reverse\n  tokenizer: char\n"
            "model:\n  cell: lstm\n  emb_dim: 8\n"
            "train:\n  lr: 3.0e-3\n  betas: [0.8, 0.9]\n  max_time: 10\n"
            "decode:\n  max_len_b: 4\n",
        )
    )
    assert isinstance(cfg, Config)
    assert cfg.data.task == "reverse" and cfg.data.tokenizer == "char"
    assert cfg.model.cell == "lstm" and cfg.model.emb_dim == 8
    assert cfg.model.hidden_dim == ModelConfig().hidden_dim  # untouched keys keep defaults
    assert cfg.train.lr == 3e-3
    assert cfg.train.betas == (0.8, 0.9)
    assert cfg.train.max_time == 10.0 and isinstance(cfg.train.max_time, float)
    assert cfg.decode.max_len_b == 4


def test_empty_file_and_no_file_give_defaults(tmp_path: Path) -> None:
    assert load_config(_yaml(tmp_path, "")) == Config()
    assert load_config(_yaml(tmp_path, "train:\nmodel:\n", "empty_sections.yaml")) == Config()
    assert load_config(None) == Config()


def test_config_is_frozen() -> None:
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.train.lr = 1.0  # type: ignore[misc]


# ---------------------------------------------------------------------------- key errors


def test_unknown_key_names_full_key_and_closest(tmp_path: Path) -> None:
    message = _error(tmp_path, "train:\n  lrr: 0.1\n")
    assert "train.lrr" in message
    assert "did you mean 'lr'" in message


def test_unknown_key_without_close_match_lists_valid_keys(tmp_path: Path) -> None:
    message = _error(tmp_path, "decode:\n  zzzzzzzz: 1\n")
    assert "decode.zzzzzzzz" in message
    assert "max_len_a" in message  # the valid keys are listed instead of a guess


def test_unknown_section(tmp_path: Path) -> None:
    message = _error(tmp_path, "trian:\n  lr: 0.1\n")
    assert "trian" in message
    assert "did you mean 'train'" in message


def test_section_must_be_a_mapping(tmp_path: Path) -> None:
    assert "train" in _error(tmp_path, "train: 5\n")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    assert "mapping" in _error(tmp_path, "- data\n- model\n")


# ---------------------------------------------------------------------------- value errors


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("train:\n  lr: fast\n", "train.lr"),
        ("train:\n  max_steps: 2.5\n", "train.max_steps"),
        ("train:\n  max_steps: true\n", "train.max_steps"),
        ("model:\n  bidirectional: 'yes'\n", "model.bidirectional"),
        ("data:\n  train: 5\n", "data.train"),
        ("train:\n  betas: [0.9]\n", "train.betas"),
        ("train:\n  betas: [0.9, high]\n", "train.betas[1]"),
    ],
)
def test_wrong_type_names_dotted_path(tmp_path: Path, text: str, where: str) -> None:
    assert where in _error(tmp_path, text)


@pytest.mark.parametrize(
    ("text", "where", "words"),
    [
        ("model:\n  dropout: 1.5\n", "model.dropout", "maximum"),
        ("train:\n  batch_tokens: 0\n", "train.batch_tokens", "minimum"),
        ("train:\n  lr: -1.0e-3\n", "train.lr", "minimum"),
        ("train:\n  max_time: -1\n", "train.max_time", "minimum"),
        ("data:\n  vocab_size: 4\n", "data.vocab_size", "minimum"),
    ],
)
def test_out_of_range_value(tmp_path: Path, text: str, where: str, words: str) -> None:
    message = _error(tmp_path, text)
    assert where in message and words in message


def test_literal_choice_lists_valid_options(tmp_path: Path) -> None:
    message = _error(tmp_path, "model:\n  cell: rnn\n")
    assert "model.cell" in message
    assert "'gru'" in message and "'lstm'" in message
    message = _error(tmp_path, "data:\n  task: translate\n")
    assert "data.task" in message
    for task in ("dates", "reverse", "sort", "addition"):
        assert repr(task) in message


def test_config_error_is_a_user_error() -> None:
    assert issubclass(ConfigError, Seq2SeqError)


# ---------------------------------------------------------------------------- overrides


def test_dotted_overrides_apply(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "train:\n  lr: 0.1\n  max_steps: 7\n")
    cfg = load_config(path, ["train.lr=1e-4", "model.cell=lstm", "data.task=sort"])
    assert cfg.train.lr == pytest.approx(1e-4)
    assert isinstance(cfg.train.lr, float)
    assert cfg.train.max_steps == 7  # a key the overrides leave alone
    assert cfg.model.cell == "lstm"
    assert cfg.data.task == "sort"


def test_overrides_without_a_file() -> None:
    cfg = load_config(None, ["train.max_steps=3", "model.bidirectional=false"])
    assert cfg.train.max_steps == 3
    assert cfg.model.bidirectional is False


def test_later_override_wins() -> None:
    assert load_config(None, ["train.seed=1", "train.seed=2"]).train.seed == 2


def test_override_into_empty_section(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "train:\n  # lr: 0.1   (every key commented out)\n")
    assert load_config(path, ["train.lr=0.5"]).train.lr == 0.5


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("train.lr=fast", "train.lr"),
        ("model.dropout=1.5", "model.dropout"),
        ("train.lrr=1", "did you mean 'lr'"),
        ("trian.lr=1", "did you mean 'train'"),
        ("model.cell=rnn", "'gru'"),
    ],
)
def test_overrides_are_validated(override: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert words in str(info.value)


@pytest.mark.parametrize("override", ["trainlr=1", "train.lr", "train.lr.x=1", ".lr=1", "train.=1"])
def test_malformed_override(override: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert override in str(info.value)
    assert "section.key=value" in str(info.value)


def test_override_with_unparseable_value() -> None:
    with pytest.raises(ConfigError, match="train.betas"):
        load_config(None, ["train.betas=[0.9, 0.98"])


def test_apply_overrides_parses_values_as_yaml() -> None:
    raw = apply_overrides({}, ["train.betas=[0.5, 0.6]", "train.valid_bleu=no", "data.train=x"])
    expected_path = str(Path("x").resolve())  # a path typed on a command line: cwd-relative
    assert raw == {
        "train": {"betas": [0.5, 0.6], "valid_bleu": False},
        "data": {"train": expected_path},
    }


def test_replace_validates() -> None:
    cfg = Config().replace(train={"lr": 1e-4})
    assert cfg.train.lr == 1e-4 and cfg.model == ModelConfig()
    with pytest.raises(ConfigError, match="train.lr"):
        Config().replace(train={"lr": "fast"})
    with pytest.raises(ConfigError, match="did you mean 'max_steps'"):
        Config().replace(train={"max_step": 3})


# ---------------------------------------------------------------------------- paths


def test_relative_paths_resolve_against_config_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "configs"
    conf_dir.mkdir()
    path = _yaml(
        conf_dir,
        "data:\n  train: corpus/train\n  valid: ../shared/valid.tsv\n  test: /abs/test.jsonl\n",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(Path("..") / "configs" / "run.yaml")
    assert cfg.data.train == str((conf_dir / "corpus" / "train").resolve())
    assert cfg.data.valid == str((tmp_path / "shared" / "valid.tsv").resolve())
    assert cfg.data.test == str(Path("/abs/test.jsonl").resolve())
    assert cfg.data.sp_model is None  # unset paths stay unset
    assert load_config(path) == cfg  # the same file by its absolute name


def test_relative_path_override_resolves_against_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A path typed on the command line is relative to where it was typed.
    path = _yaml(tmp_path, "data:\n  tokenizer: char\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(path, ["data.train=corpus/train"])
    assert cfg.data.train == str((elsewhere / "corpus" / "train").resolve())
    assert load_config(None, ["data.train=corpus/train"]).data.train == str(
        (elsewhere / "corpus" / "train").resolve()
    )


def test_non_path_strings_are_not_resolved(tmp_path: Path) -> None:
    cfg = load_config(_yaml(tmp_path, "data:\n  src_lang: de\n  tgt_lang: en\n"))
    assert (cfg.data.src_lang, cfg.data.tgt_lang) == ("de", "en")


# ---------------------------------------------------------------------------- file errors


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found") as info:
        load_config(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(info.value)


def test_directory_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path)


def test_invalid_yaml(tmp_path: Path) -> None:
    message = _error(tmp_path, "train:\n  lr: [0.1\n  seed: 3\n")
    assert "run.yaml" in message and "YAML" in message


def test_non_utf8_yaml(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("data:\n  src_lang: d\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="latin1.yaml"):
        load_config(path)


def test_parse_config_names_origin() -> None:
    with pytest.raises(ConfigError, match="ckpt.safetensors"):
        parse_config("train: [1\n", "ckpt.safetensors")
    assert parse_config(dump_config(Config()), "x") == Config()


# ---------------------------------------------------------------------------- round trips


def _custom() -> Config:
    return from_dict(
        {
            "data": {"task": "dates", "tokenizer": "char", "train": "/data/train", "max_len": 9},
            "model": {"cell": "lstm", "attention": "luong", "dropout": 0.0},
            "train": {
                "lr": 1e-4,
                "betas": [0.8, 0.9],
                "max_time": 2.5,
                "schedule": "noam",
                "warmup_steps": 10,
            },
            "decode": {"max_len_a": 0.0},
        }
    )


def test_dict_round_trip() -> None:
    cfg = _custom()
    raw = to_dict(cfg)
    assert raw["train"]["betas"] == [0.8, 0.9]  # tuples become YAML-friendly lists
    assert from_dict(raw) == cfg
    assert from_dict(to_dict(Config())) == Config()


def test_file_round_trip(tmp_path: Path) -> None:
    cfg = _custom()
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == cfg
    assert parse_config(dump_config(cfg), "text") == cfg


def test_saved_config_keeps_resolved_paths(tmp_path: Path) -> None:
    # A config saved in a run directory must still name the original data when reloaded.
    source = _yaml(tmp_path, "data:\n  train: corpus/train\n")
    cfg = load_config(source)
    run = tmp_path / "run"
    run.mkdir()
    save_config(cfg, run / "config.yaml")
    assert load_config(run / "config.yaml").data.train == cfg.data.train


def test_defaults_are_valid() -> None:
    raw = to_dict(Config())
    assert set(raw) == {"data", "model", "train", "decode", "prune"}
    assert from_dict(raw).train == TrainConfig()


# ---------------------------------------------------------------------------- shipped configs


def test_every_example_config_loads() -> None:
    configs = sorted([*REPO.glob("examples/**/*.yaml"), *REPO.glob("bench/configs/*.yaml")])
    assert configs, "examples/ should ship at least one YAML config"
    for path in configs:
        cfg = load_config(path)
        assert isinstance(cfg, Config), path


# ---------------------------------------------------------------------------- model settings


@pytest.mark.parametrize(
    "model, words",
    [
        ({"arch": "transformer", "hidden_dim": 30, "heads": 4}, "model.hidden_dim: 30 is not"),
        ({"hidden_dim": 15}, "model.hidden_dim: a bidirectional encoder needs an even size"),
        ({"emb_dim": 32, "hidden_dim": 64, "tie_embeddings": True}, "model.tie_embeddings"),
        ({"attention": "bahdanau", "attention_score": "dot"}, "model.attention_score"),
        ({"attention": "none", "input_feeding": False}, "model.input_feeding"),
    ],
)
def test_model_settings_that_cannot_be_built(model: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        from_dict({"model": model})


@pytest.mark.parametrize(
    "arch, key, value",
    [
        ("transformer", "emb_dim", 64),
        ("transformer", "cell", "lstm"),
        ("transformer", "attention", "luong"),
        ("transformer", "bidirectional", False),
        ("rnn", "heads", 8),
        ("rnn", "ff_dim", 2048),
        ("rnn", "norm", "post"),
        ("rnn", "positions", "learned"),
        ("rnn", "max_positions", 64),
        ("rnn", "share_embeddings", True),
    ],
)
def test_keys_of_the_other_family_are_errors(
    tmp_path: Path, arch: str, key: str, value: object
) -> None:
    text = f"data: {{joint_vocab: true}}\nmodel: {{arch: {arch}, {key}: {value}}}\n"
    message = _error(tmp_path, text)
    assert message.startswith(f"model.{key}:") and repr(arch) in message


def test_a_family_key_at_its_default_is_accepted() -> None:
    cfg = from_dict({"model": {"arch": "transformer", "emb_dim": 256, "heads": 8}})
    assert cfg.model.heads == 8


def test_model_errors_come_before_any_work(tmp_path: Path) -> None:
    """A model that cannot be built fails when its config is read, not after tokenizing."""
    missing = tmp_path / "no-such-corpus"
    text = f"data: {{train: {missing}}}\nmodel: {{arch: transformer, hidden_dim: 30}}\n"
    assert "not divisible by model.heads=4" in _error(tmp_path, text)


# ---------------------------------------------------------------------------- contradictions


@pytest.mark.parametrize(
    "raw, key",
    [
        (
            {"model": {"arch": "transformer", "max_positions": 50}, "data": {"max_len": 60}},
            "model.max_positions",
        ),
        ({"train": {"early_stop_metric": "bleu", "valid_bleu": False}}, "train.valid_bleu"),
        ({"data": {"tokenizer": "char", "sp_model": "/x.model"}}, "data.sp_model"),
        ({"train": {"schedule": "noam", "warmup_steps": 0}}, "train.warmup_steps"),
    ],
)
def test_contradictory_settings_are_errors(raw: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        from_dict(raw)


def test_share_embeddings_needs_joint_vocab() -> None:
    with pytest.raises(ConfigError, match="data.joint_vocab"):
        Config(model=ModelConfig(arch="transformer", share_embeddings=True))


def test_training_precision_defaults_to_fp32() -> None:
    assert TrainConfig().precision == "fp32"


def test_source_and_target_limits_must_fit_the_transformer(tmp_path: Path) -> None:
    base = "model: {arch: transformer, max_positions: 64}\ndata: {max_len: 50, "
    assert "data.max_src_len=64 (+ EOS) exceeds" in _error(tmp_path, base + "max_src_len: 64}")
    assert "data.max_tgt_len=80 (+ EOS) exceeds" in _error(tmp_path, base + "max_tgt_len: 80}")
    assert load_config(_yaml(tmp_path, base + "max_src_len: 63}")).data.max_src_len == 63


def test_copy_needs_a_joint_vocabulary_and_attention(tmp_path: Path) -> None:
    assert "set data.joint_vocab: true" in _error(tmp_path, "model: {copy: true}\n")
    text = "data: {joint_vocab: true}\nmodel: {copy: true, attention: none}\n"
    assert "model.copy: the copy head copies through attention" in _error(tmp_path, text)
    text = "data: {joint_vocab: true}\nmodel: {arch: transformer, copy: true}\n"
    assert load_config(_yaml(tmp_path, text)).model.copy


def test_coverage_needs_additive_attention_and_its_loss_needs_coverage(tmp_path: Path) -> None:
    text = "model: {coverage: true, attention: luong}\n"
    assert "model.coverage: the coverage vector enters" in _error(tmp_path, text)
    assert "model.coverage: the recurrent model alone" in _error(
        tmp_path, "model: {arch: transformer, coverage: true}\n"
    )
    assert "train.coverage_loss: the coverage loss needs" in _error(
        tmp_path, "train: {coverage_loss: 1.0}\n"
    )
    cfg = load_config(_yaml(tmp_path, "model: {coverage: true}\ntrain: {coverage_loss: 1.0}\n"))
    assert cfg.model.coverage and cfg.train.coverage_loss == 1.0


def test_symbols_are_single_pieces(tmp_path: Path) -> None:
    assert "data.symbols: ['a b', '']" in _error(
        tmp_path, "data: {symbols: ['<eou>', 'a b', '']}\n"
    )
    cfg = load_config(_yaml(tmp_path, "data: {symbols: ['<eou>', '<2de>']}\n"))
    assert cfg.data.symbols == ("<eou>", "<2de>")
