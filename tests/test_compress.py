"""Pruning and distillation: sparse checkpoints, magnitude masks, structured shrinking
equal to masking, ``seq2seq prune`` (with fine-tuning) and ``seq2seq distill``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from seq2seq.checkpoint import load_checkpoint, restore_model, save_checkpoint
from seq2seq.cli import main
from seq2seq.config import ModelConfig
from seq2seq.data.prepare import encode, load_split
from seq2seq.data.tasks import make_task
from seq2seq.inference import Translator
from seq2seq.models.build import build_model
from seq2seq.models.prune import (
    drop_decoder_layers,
    magnitude_prune,
    prunable,
    shrink_rnn,
    shrink_transformer,
    zero_masks,
)
from seq2seq.rundir import RunDir
from seq2seq.training.compress import _kept_decoder_layers
from seq2seq.training.loss import mean_loss
from tests.conftest import (
    REVERSE_SOURCES,
    cli_error,
    cli_lines,
    reverse_sections,
    same_threads,
    texts_of,
    tiny_transformer,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).prefixed("model.")


def _zero_share(model: torch.nn.Module) -> float:
    params = list(prunable(model).values())
    return sum(int(p.eq(0).sum()) for p in params) / sum(p.numel() for p in params)


# ---------------------------------------------------------------------------- checkpoints


def test_tied_weights_are_stored_once_and_load_tied(tmp_path: Path) -> None:
    model = tiny_transformer()  # tie_embeddings: the output layer is the target embedding
    save_checkpoint(tmp_path / "m.safetensors", model, "")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m.safetensors"), "pt") as handle:
        stored = set(handle.keys())
    assert "model.out.weight" not in stored and "model.tgt_embed.tokens.weight" in stored
    fresh = tiny_transformer()
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    restore_model(fresh, load_checkpoint(tmp_path / "m.safetensors"))
    assert fresh.out.weight is fresh.tgt_embed.tokens.weight
    for name, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name


def test_views_of_other_tensors_are_not_taken_for_ties(tmp_path: Path) -> None:
    # transposed (non-contiguous) sparse weights of one shape: each is copied to be
    # stored, and a freed copy's address must not make the next one look tied to it
    g = torch.Generator().manual_seed(0)
    weights = {}
    for i in range(4):
        w = torch.randn(64, 64, generator=g)
        w[w.abs() < 1.0] = 0
        weights[f"l{i}"] = w.t()
    save_checkpoint(tmp_path / "w.safetensors", weights, "")
    loaded = _weights(tmp_path / "w.safetensors")
    for name, value in weights.items():
        assert torch.equal(loaded[name], value), name


def test_mostly_zero_weights_are_stored_sparsely_and_exactly(tmp_path: Path) -> None:
    model = tiny_transformer()
    save_checkpoint(tmp_path / "dense.safetensors", model, "")
    magnitude_prune(model, 0.5)
    save_checkpoint(tmp_path / "sparse.safetensors", model, "")
    loaded = _weights(tmp_path / "sparse.safetensors")
    for name, value in model.state_dict().items():
        assert torch.equal(loaded[name], value), name
    dense, sparse = (tmp_path / f"{n}.safetensors" for n in ("dense", "sparse"))
    assert sparse.stat().st_size < 0.6 * dense.stat().st_size


# ---------------------------------------------------------------------------- magnitude


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_magnitude_pruning_zeroes_the_smallest_share(scope: str) -> None:
    model = tiny_transformer()
    before = {n: p.detach().clone() for n, p in prunable(model).items()}
    share = magnitude_prune(model, 0.8, scope)
    assert share == pytest.approx(0.8, abs=0.01)
    for name, p in prunable(model).items():
        kept, old = p.detach().ne(0), before[name].abs()
        if scope == "layer":
            assert kept.float().mean() == pytest.approx(0.2, abs=0.02), name
        if kept.any() and (~kept).any():  # every removed weight was smaller than the kept
            assert old[~kept].max() <= old[kept].min(), name
    assert model.out.weight is model.tgt_embed.tokens.weight  # still tied


@pytest.mark.parametrize("sparsity", [0.0, 1.0, -0.1, 1.5])
def test_magnitude_pruning_refuses_a_sparsity_outside_0_1(sparsity: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        magnitude_prune(tiny_transformer(), sparsity)


# ---------------------------------------------------------------------------- structured


def _small_transformer(dec_layers: int) -> ModelConfig:
    return ModelConfig(
        arch="transformer", hidden_dim=32, heads=4, ff_dim=64, enc_layers=2,
        dec_layers=dec_layers, dropout=0.0, share_embeddings=True,
    )  # fmt: skip


@pytest.mark.parametrize("heads, ff_dim", [(2, 32), (1, 64), (4, 8)])
def test_shrinking_equals_masking_the_removed_heads_and_neurons(heads: int, ff_dim: int) -> None:
    torch.manual_seed(3)
    cfg = _small_transformer(dec_layers=2)
    model = build_model(cfg, 40, 40).eval()
    small, small_cfg = shrink_transformer(model, cfg, heads, ff_dim)
    assert (small_cfg.heads, small_cfg.head_dim, small_cfg.ff_dim) == (heads, 8, ff_dim)
    assert isinstance(build_model(small_cfg, 40, 40), type(small))  # the config builds it
    # The reference: the full model with the removed heads' values and the removed
    # neurons zeroed contributes nothing through them.
    small_state = small.state_dict()
    with torch.no_grad():
        for name, module in model.named_modules():
            if hasattr(module, "kv") and hasattr(module, "head_dim"):
                dh, all_heads = module.head_dim, module.heads
                kept_v = small_state[f"{name}.kv.weight"][heads * dh :].view(heads, dh, -1)
                values = module.kv.weight[all_heads * dh :].view(all_heads, dh, -1)
                for h in range(all_heads):
                    if not any(torch.equal(values[h], k) for k in kept_v):
                        module.kv.weight[
                            all_heads * dh + h * dh : all_heads * dh + (h + 1) * dh
                        ] = 0
                        module.kv.bias[all_heads * dh + h * dh : all_heads * dh + (h + 1) * dh] = 0
            if hasattr(module, "inner") and hasattr(module, "outer"):
                kept = small_state[f"{name}.inner.weight"]
                for j in range(module.inner.out_features):
                    if not any(torch.equal(module.inner.weight[j], k) for k in kept):
                        module.inner.weight[j] = 0
                        module.inner.bias[j] = 0
    g = torch.Generator().manual_seed(1)
    src = torch.randint(4, 40, (3, 7), generator=g)
    tgt = torch.randint(4, 40, (3, 5), generator=g)
    src[2, 4:] = 0
    torch.testing.assert_close(small.eval()(src, tgt), model(src, tgt), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("keep", [[0, 2], [1], [2, 0]])
def test_dropping_decoder_layers_equals_skipping_them(keep: list[int]) -> None:
    torch.manual_seed(4)
    cfg = _small_transformer(dec_layers=3)
    model = build_model(cfg, 40, 40).eval()
    small, small_cfg = drop_decoder_layers(model, cfg, keep)
    assert small_cfg.dec_layers == len(keep) and small_cfg.enc_layers == 2
    # The reference: the full model itself, running only the kept layers in order.
    model.decoder = torch.nn.ModuleList(model.decoder[i] for i in sorted(keep))
    g = torch.Generator().manual_seed(2)
    src, tgt = torch.randint(4, 40, (3, 7), generator=g), torch.randint(4, 40, (3, 5), generator=g)
    src[1, 5:] = 0
    torch.testing.assert_close(small.eval()(src, tgt), model(src, tgt))


@pytest.mark.parametrize("keep", [[], [0, 0], [3]])
def test_dropping_decoder_layers_refuses_impossible_choices(keep: list[int]) -> None:
    cfg = ModelConfig(arch="transformer", hidden_dim=32, heads=4, ff_dim=64, dec_layers=3)
    with pytest.raises(ValueError, match="cannot keep decoder layers"):
        drop_decoder_layers(build_model(cfg, 40, 40), cfg, keep)


RNN_VARIANTS = {
    "bahdanau": {},
    "luong-feeding": {"attention": "luong", "cell": "lstm"},
    "bahdanau-copy-2-layers": {"copy": True, "dec_layers": 2, "enc_layers": 2},
}


@pytest.mark.parametrize("variant", sorted(RNN_VARIANTS))
def test_shrinking_an_rnn_equals_masking_the_removed_units(variant: str) -> None:
    torch.manual_seed(4)
    cfg = ModelConfig(emb_dim=12, hidden_dim=16, dropout=0.0, **RNN_VARIANTS[variant])
    model = build_model(cfg, 40, 40).eval()
    small, small_cfg = shrink_rnn(model, cfg, 6)
    assert small_cfg.output_dim == 6 and small.decoder.out.in_features == 6
    assert isinstance(build_model(small_cfg, 40, 40), type(small))
    kept = small.state_dict()["decoder.combine.weight"]
    with torch.no_grad():  # a unit whose row is zero gives tanh(0) = 0: it adds nothing
        combine = model.decoder.combine
        for j in range(combine.out_features):
            if not any(torch.equal(combine.weight[j], k) for k in kept):
                combine.weight[j] = 0
                combine.bias[j] = 0
    g = torch.Generator().manual_seed(1)
    src = torch.randint(4, 40, (3, 7), generator=g)
    tgt = torch.randint(4, 40, (3, 5), generator=g)
    src[2, 4:] = 0
    torch.testing.assert_close(small(src, tgt), model(src, tgt), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "model, message",
    [
        ({"attention": "none"}, "no attention"),
        ({"tie_embeddings": True, "hidden_dim": 12}, "tied"),
    ],
)
def test_shrinking_an_rnn_refuses_what_has_no_separate_output_layer(
    model: dict, message: str
) -> None:
    cfg = ModelConfig(**{"emb_dim": 12, "hidden_dim": 16, "dropout": 0.0, **model})
    with pytest.raises(ValueError, match=message):
        shrink_rnn(build_model(cfg, 40, 40), cfg, 8)


def test_shrinking_keeps_the_most_important_heads() -> None:
    model = tiny_transformer()
    attn = model.encoder[0].attn
    with torch.no_grad():  # head 2's value path is by far the largest
        attn.kv.weight[32 + 16 : 32 + 24] *= 100
    cfg = ModelConfig(
        arch="transformer", hidden_dim=32, heads=4, ff_dim=64, enc_layers=2, dec_layers=2,
        dropout=0.0, tie_embeddings=True,
    )  # fmt: skip
    small, _ = shrink_transformer(model, cfg, 1, 64)
    assert torch.equal(small.encoder[0].attn.kv.weight[8:], attn.kv.weight[32 + 16 : 32 + 24])


# ---------------------------------------------------------------------------- seq2seq prune


def test_prune_magnitude_writes_a_smaller_run_that_decodes(
    reverse_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture, arch: str
) -> None:
    source, out = reverse_runs[arch], tmp_path / "pruned"
    cli_lines(["prune", source, "--out", out, "--sparsity", "0.5"], capsys)
    run = RunDir(out)
    cfg = run.config()
    assert (cfg.prune.method, cfg.prune.sparsity, cfg.prune.scope) == ("magnitude", 0.5, "global")
    assert cfg.prune.source == str(source.resolve())
    # the original file stores tied weights again: compare with the same model saved now
    original = Translator.from_run(source)
    save_checkpoint(tmp_path / "dense.safetensors", original.model, "")
    assert run.best.stat().st_size < 0.65 * (tmp_path / "dense.safetensors").stat().st_size
    pruned = Translator.from_run(out)
    assert _zero_share(pruned.model) == pytest.approx(0.5, abs=0.01)
    texts = texts_of(pruned.translate(REVERSE_SOURCES[:10]))
    assert all(isinstance(t, str) for t in texts)
    message = cli_error(["prune", out, "--out", tmp_path / "again"], capsys)
    assert "pruned already" in message and "magnitude, sparsity 0.5" in message


@pytest.mark.parametrize("sparsity", ["0", "1", "1.2", "-0.5"])
def test_prune_refuses_a_sparsity_outside_0_1(
    reverse_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture, sparsity: str
) -> None:
    argv = ["prune", reverse_runs["rnn"], "--out", tmp_path / "p", f"--sparsity={sparsity}"]
    assert "between 0 and 1" in cli_error(argv, capsys)
    assert not (tmp_path / "p").exists()


def test_prune_refuses_bad_targets(
    reverse_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rnn = reverse_runs["rnn"]
    argv = ["prune", rnn, "--out", tmp_path / "s", "--method", "structured", "--heads", "2"]
    assert "--heads does not apply" in cli_error(argv, capsys)
    assert "is the run being pruned" in cli_error(["prune", rnn, "--out", rnn], capsys)
    assert "not a run directory" in cli_error(["prune", tmp_path, "--out", tmp_path / "x"], capsys)
    tf = reverse_runs["transformer"]
    message = cli_error(
        ["prune", tf, "--out", tmp_path / "h", "--method=structured", "--heads=9"], capsys
    )
    assert "cannot keep 9 heads" in message


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--heads", "2"], "--heads does not apply to --method magnitude"),
        (["--method", "structured", "--sparsity", "0.5"], "--sparsity does not apply"),
        (["model.hidden_dim=32"], "train.* and decode.* changes only"),
        (["--finetune-steps", "3", "train.max_steps=9"], "sets how long fine-tuning runs"),
        (["--finetune-steps", "-1"], "0 or more"),
        (["--dec-layers", "1"], "--dec-layers does not apply to --method magnitude"),
        (["--method", "structured", "--dec-layers", "3"], "cannot keep 3 decoder layers"),
    ],
)
def test_prune_refuses_settings_it_would_not_use(
    reverse_runs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    flags: list[str],
    message: str,
) -> None:
    argv = ["prune", reverse_runs["transformer"], "--out", tmp_path / "p", *flags]
    assert message in cli_error(argv, capsys)
    assert not (tmp_path / "p").exists()


def test_prune_and_distill_refuse_torchrun(
    reverse_runs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    tf = reverse_runs["transformer"]
    assert "without torchrun" in cli_error(["prune", tf, "--out", tmp_path / "p"], capsys)
    argv = ["distill", tf, _student(tmp_path), "--out", tmp_path / "s"]
    assert "without torchrun" in cli_error(argv, capsys)


def test_distill_checks_its_run_directory_before_translating(
    reverse_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "student"
    argv = ["distill", reverse_runs["transformer"], _student(tmp_path), "--out", out, "--resume"]
    assert "nothing to resume" in cli_error(argv, capsys)
    assert not RunDir(out).teacher_outputs.exists()


def test_prune_structured_gives_a_smaller_dense_model(
    reverse_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture, arch: str
) -> None:
    source, out = reverse_runs[arch], tmp_path / "small"
    cli_lines(["prune", source, "--out", out, "--method", "structured"], capsys)
    cfg = RunDir(out).config()
    if arch == "transformer":
        assert (cfg.model.heads, cfg.model.head_dim, cfg.model.ff_dim) == (2, 16, 64)
    else:
        assert cfg.model.output_dim == 32
    small, full = Translator.from_run(out), Translator.from_run(source)
    count = lambda t: sum(p.numel() for p in t.model.parameters())  # noqa: E731
    assert count(small) < count(full)
    assert len(small.translate(REVERSE_SOURCES[:5])) == 5


def test_prune_drops_the_decoder_layer_the_validation_loss_misses_least(
    reverse_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    source, out = reverse_runs["transformer"], tmp_path / "shallow"
    full = Translator.from_run(source, device="cpu")
    cfg = RunDir(source).config()
    valid = load_split(cfg.data, "valid")
    examples = encode(valid, full.src_codec, full.tgt_codec, None)
    cpu = torch.device("cpu")
    without = [
        mean_loss(drop_decoder_layers(full.base_model, cfg.model, [1 - i])[0], examples, 4000, cpu)
        for i in range(2)
    ]
    argv = ["prune", source, "--out", out, "--method", "structured", "--dec-layers", "1"]
    cli_lines([*argv, "--heads", "4", "--ff-dim", "128"], capsys)
    small_cfg = RunDir(out).config()
    assert small_cfg.model.dec_layers == 1 and small_cfg.prune.method == "structured"
    kept = 1 - min(range(2), key=without.__getitem__)
    small = Translator.from_run(out, device="cpu")
    for name, value in small.base_model.state_dict().items():  # the kept layer, unchanged
        original = name.replace("decoder.0.", f"decoder.{kept}.")
        assert torch.equal(value, full.base_model.state_dict()[original]), name
    assert len(small.translate(REVERSE_SOURCES[:5])) == 5


def test_keeping_every_decoder_layer_ranks_nothing(reverse_runs: dict[str, Path]) -> None:
    source = reverse_runs["transformer"]
    cfg = RunDir(source).config()
    full = Translator.from_run(source, device="cpu")
    codecs = (full.src_codec, full.tgt_codec)
    kept = _kept_decoder_layers(RunDir(source), cfg, full.base_model, codecs, 2)
    assert kept == [0, 1]


def test_prune_fine_tunes_from_the_runs_place_and_keeps_the_zeros(
    reverse_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture, arch: str
) -> None:
    source, out = reverse_runs[arch], tmp_path / "tuned"
    before = load_checkpoint(source / "last.safetensors").trainer
    argv = ["prune", source, "--out", out, "--sparsity", "0.6", "--finetune-steps", "6"]
    cli_lines(argv, capsys)
    after = load_checkpoint(out / "last.safetensors").trainer
    assert after["progress"]["step"] == before["progress"]["step"] + 6
    assert after["schedule"] != {} and after["order"] == before["order"]
    assert after["progress"]["tgt_tokens"] > 0
    pruned = _weights(out / "best.safetensors")
    untuned = tmp_path / "untuned"
    cli_lines(["prune", source, "--out", untuned, "--sparsity", "0.6"], capsys)
    untouched = _weights(untuned / "best.safetensors")
    changed = False
    for name, value in untouched.items():
        if value.dim() >= 2:
            assert torch.equal(pruned[name][value.eq(0)], value[value.eq(0)]), name  # zeros stay
            changed |= not torch.equal(pruned[name], value)
    assert changed  # fine-tuning did update the rest


def test_prune_fine_tuning_needs_the_runs_last(
    reverse_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    copy = tmp_path / "best-only"
    copy.mkdir()
    for path in reverse_runs["rnn"].iterdir():
        if path.is_file() and path.name != "last.safetensors":
            (copy / path.name).write_bytes(path.read_bytes())
    argv = ["prune", copy, "--out", tmp_path / "p", "--finetune-steps", "3"]
    assert "last.safetensors" in cli_error(argv, capsys)


def test_zero_masks_hold_the_pruned_entries() -> None:
    model = tiny_transformer()
    magnitude_prune(model, 0.5)
    masks = zero_masks(model)
    assert masks and all(bool(m.logical_not().any()) for _, m in masks)


def test_structured_export_to_ctranslate2_matches_native(
    reverse_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("ctranslate2")
    from seq2seq.inference.ct2 import CTranslate2Translator, export_ctranslate2

    out = tmp_path / "small"
    cli_lines(["prune", reverse_runs["transformer"], "--out", out, "--method=structured"], capsys)
    export_ctranslate2(out, tmp_path / "ct2")
    native = texts_of(Translator.from_run(out, device="cpu").translate(REVERSE_SOURCES))
    exported = texts_of(
        CTranslate2Translator.from_export(
            tmp_path / "ct2", compute_type="float32", threads=1
        ).translate(REVERSE_SOURCES)
    )
    assert exported == native


# ---------------------------------------------------------------------------- seq2seq distill


def _student(tmp_path: Path, steps: int = 4) -> Path:
    sections = reverse_sections({"emb_dim": 16, "hidden_dim": 32}, steps, task_size=300)
    path = tmp_path / "student.yaml"
    import yaml

    path.write_text(yaml.safe_dump(sections), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def distilled(reverse_runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A student distilled from the reverse Transformer (beam 2, 4 updates)."""
    root = tmp_path_factory.mktemp("distilled")
    argv = ["distill", reverse_runs["transformer"], _student(root), "--out", root / "student"]
    with same_threads():
        assert main([str(a) for a in [*argv, "--beam", "2"]]) == 0
    return root


def test_distill_trains_the_student_on_the_teachers_translations(
    reverse_runs: dict[str, Path], distilled: Path
) -> None:
    teacher = reverse_runs["transformer"]
    run = RunDir(distilled / "student")
    sources = make_task("reverse", "train", 300, 1)[0]
    lines = run.teacher_outputs.read_text(encoding="utf-8").split("\n")[:-1]
    assert len(lines) == len(sources)
    beam = Translator.from_run(teacher, decode={"method": "beam", "beam_size": 2})
    assert lines[:20] == texts_of(beam.translate(sources[:20]))
    assert json.loads(run.teacher_key.read_text())["beam"] == 2
    assert load_checkpoint(run.last).trainer["progress"]["step"] == 4


def test_distill_continues_translations_cut_short(
    reverse_runs: dict[str, Path],
    distilled: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    teacher, out, config = reverse_runs["transformer"], tmp_path / "student", _student(tmp_path)
    shutil.copytree(distilled / "student", out)
    run = RunDir(out)
    whole = run.teacher_outputs.read_text(encoding="utf-8")
    # a crash: the file holds 10 lines and part of the 11th, no checkpoint yet
    cut = whole.split("\n")
    run.teacher_outputs.write_text("\n".join(cut[:10]) + "\nhalf a li", encoding="utf-8")
    for name in ("last", "best"):
        (out / f"{name}.safetensors").unlink()
    with same_threads():
        cli_lines(["distill", teacher, config, "--out", out, "--beam", "2"], capsys)
    assert run.teacher_outputs.read_text(encoding="utf-8") == whole
    # another teacher's cache is not taken for this one's
    argv = ["distill", teacher, config, "--out", out, "--beam", "3", "--resume"]
    assert "another teacher" in cli_error(argv, capsys)
    assert "already holds a training run" in cli_error(
        ["distill", teacher, config, "--out", out, "--beam", "2"], capsys
    )
    with same_threads():
        cli_lines(["distill", teacher, config, "--out", out, "--beam", "2", "--resume",
                   "train.max_steps=6"], capsys)  # fmt: skip
    assert load_checkpoint(run.last).trainer["progress"]["step"] == 6


def test_prune_refuses_dropping_layers_of_a_recurrent_model(
    reverse_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["prune", reverse_runs["rnn"], "--out", tmp_path / "p", "--method", "structured"]
    assert "--dec-layers does not apply" in cli_error([*argv, "--dec-layers", "1"], capsys)
