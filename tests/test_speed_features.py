"""Training-speed features that must not change what the model computes."""

import logging
import os
import random

import pytest
import torch

from seq2seq.checkpoint import average_checkpoints, load_checkpoint, save_checkpoint
from seq2seq.config import Config, ModelConfig, TrainConfig, from_dict
from seq2seq.data.batching import Examples, collate
from seq2seq.data.cache import encode_cached, fingerprint
from seq2seq.data.corpus import ParallelText
from seq2seq.data.tokenizers import CharTokenizer, TextCodec
from seq2seq.data.vocab import PAD, Vocab
from seq2seq.models.build import build_model
from seq2seq.training.loop import Trainer
from seq2seq.training.loss import batch_loss

V = 40


def examples(n=24, seed=0):
    rng = random.Random(seed)
    src = [[rng.randrange(4, V) for _ in range(rng.randint(2, 9))] for _ in range(n)]
    tgt = [[rng.randrange(4, V) for _ in range(rng.randint(2, 9))] for _ in range(n)]
    return Examples(src, tgt)


def transformer(dropout=0.0):
    torch.manual_seed(0)
    cfg = ModelConfig(
        arch="transformer",
        hidden_dim=32,
        heads=4,
        ff_dim=64,
        enc_layers=2,
        dec_layers=2,
        dropout=dropout,
        tie_embeddings=True,
    )
    return build_model(cfg, V, V)


def test_bf16_step_loss_within_one_percent_of_fp32():
    model, data = transformer(), examples()
    batch = collate(data, list(range(len(data))))
    args = (batch.src, batch.tgt_in, batch.tgt_out, PAD, 0.1)
    fp32 = batch_loss(model, *args).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = batch_loss(model, *args).item()
    assert bf16 == pytest.approx(fp32, rel=0.01)
    assert bf16 != fp32  # bf16 really ran


def test_loss_skipping_padding_equals_full_logits():
    model, data = transformer(), examples()
    batch = collate(data, list(range(len(data))))
    full = torch.nn.functional.cross_entropy(
        model(batch.src, batch.tgt_in).flatten(0, 1),
        batch.tgt_out.flatten(),
        ignore_index=PAD,
        reduction="sum",
    )
    fast = batch_loss(model, batch.src, batch.tgt_in, batch.tgt_out, PAD)
    assert fast.item() == pytest.approx(full.item(), rel=1e-5)


def _trainer(tmp_path, model, data, **train):
    cfg = from_dict({"train": {"lr": 1e-3, "clip_grad_norm": 0.0, **train}})
    return Trainer(cfg, model, data, None, tmp_path, torch.device("cpu"))


def test_accumulated_batches_equal_one_big_batch(tmp_path):
    data = examples()
    first, second = list(range(12)), list(range(12, 24))
    a = _trainer(tmp_path / "a", transformer(), data)
    a._train_step([collate(data, first), collate(data, second)])
    b = _trainer(tmp_path / "b", transformer(), data)
    b._train_step([collate(data, first + second)])
    # Compare gradients: Adam's first update is ~lr * sign(grad), which would amplify
    # rounding noise in gradients that are zero in exact arithmetic (key biases).
    for (name, pa), pb in zip(a.model.named_parameters(), b.model.parameters(), strict=True):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6), name


def test_accumulate_consumes_that_many_batches_per_step(tmp_path):
    data = examples(60)
    trainer = _trainer(tmp_path, transformer(), data, accumulate=3, batch_tokens=40)
    trainer.step()
    assert trainer.progress.step == 1
    assert trainer.progress.batch_in_epoch == 3


def test_average_of_identical_checkpoints_is_the_same(tmp_path):
    model = transformer()
    for name in ("a", "b"):
        save_checkpoint(tmp_path / f"{name}.safetensors", model, "cfg")
    average_checkpoints(
        [tmp_path / "a.safetensors", tmp_path / "b.safetensors"], tmp_path / "avg.safetensors"
    )
    avg = load_checkpoint(tmp_path / "avg.safetensors").prefixed("model.")
    for name, value in model.state_dict().items():
        assert torch.equal(avg[name], value), name


def test_average_is_the_mean(tmp_path):
    one, two = transformer(), transformer()
    with torch.no_grad():
        for p in two.parameters():
            p.add_(1.0)
    save_checkpoint(tmp_path / "1.safetensors", one, "cfg")
    save_checkpoint(tmp_path / "2.safetensors", two, "cfg")
    average_checkpoints(
        [tmp_path / "1.safetensors", tmp_path / "2.safetensors"], tmp_path / "avg.safetensors"
    )
    avg = load_checkpoint(tmp_path / "avg.safetensors").prefixed("model.")
    for name, value in one.state_dict().items():
        assert torch.allclose(avg[name], value + 0.5, atol=1e-6), name


def _codec(text):
    tokenizer = CharTokenizer()
    return TextCodec(tokenizer, Vocab.build(tokenizer.tokenize(t) for t in text))


def test_encoded_data_is_cached_and_reused(tmp_path, caplog):
    text = ParallelText(["abc", "hello there"], ["cba", "ereht olleh"], "train", 0)
    codec = _codec(text.src + text.tgt)
    fresh = encode_cached(text, codec, codec, tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    with caplog.at_level(logging.INFO, logger="seq2seq"):
        again = encode_cached(text, codec, codec, tmp_path)
    assert "from the cache" in caplog.text
    assert again.src == fresh.src and again.tgt == fresh.tgt
    assert fresh.src[0] == codec.encode("abc")


def test_cache_key_changes_with_vocabulary_and_text():
    text = ParallelText(["abc"], ["cba"], "train", 0)
    codec = _codec(["abc"])
    other = _codec(["abcd"])
    changed = ParallelText(["abd"], ["cba"], "train", 0)
    assert fingerprint(text, codec, codec) != fingerprint(text, other, other)
    assert fingerprint(text, codec, codec) != fingerprint(changed, codec, codec)


def test_fp16_off_cuda_is_a_clear_error(tmp_path):
    from seq2seq.errors import ConfigError

    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        _trainer(tmp_path, transformer(), examples(), precision="fp16")


def test_share_embeddings_needs_joint_vocab():
    from seq2seq.errors import ConfigError

    with pytest.raises(ConfigError, match="data.joint_vocab"):
        Config(model=ModelConfig(arch="transformer", share_embeddings=True))
    assert TrainConfig().precision == "fp32"


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_fast_dropout_keeps_the_distribution(p):
    from seq2seq.models.dropout import dropout

    torch.manual_seed(0)
    x = torch.ones(400_000)
    y = dropout(x, p, training=True)
    kept = y.ne(0).float().mean().item()
    assert kept == pytest.approx(1 - p, abs=0.003)
    assert y.mean().item() == pytest.approx(1.0, abs=0.01)  # inverted scaling
    assert torch.equal(dropout(x, p, training=False), x)
    torch.manual_seed(0)
    assert torch.equal(dropout(x, p, training=True), y)  # reproducible from the seed


def test_bf16_on_cpu_bounds_the_onednn_kernel_cache(monkeypatch):
    from seq2seq.training.precision import ONEDNN_CACHE, limit_kernel_cache

    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    limit_kernel_cache(torch.device("cpu"), "fp32")
    assert "ONEDNN_PRIMITIVE_CACHE_CAPACITY" not in os.environ
    limit_kernel_cache(torch.device("cpu"), "bf16")
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == ONEDNN_CACHE
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "256")  # the user's choice wins
    limit_kernel_cache(torch.device("cpu"), "bf16")
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "256"
