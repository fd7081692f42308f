"""The training loss and the learning-rate schedules."""

import json
import math

import pytest
import torch

from seq2seq.config import ModelConfig, TrainConfig
from seq2seq.data import vocab
from seq2seq.data.batching import collate
from seq2seq.models.build import build_model
from seq2seq.training.loss import batch_loss, sequence_loss
from seq2seq.training.optim import Schedule, build_optimizer
from tests.conftest import TINY_VOCAB, random_examples, tiny_transformer

PAD, V = 0, 7


def logits_and_target():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, V, generator=g)
    target = torch.randint(1, V, (3, 5), generator=g)
    target[0, 3:] = PAD
    target[2, 1:] = PAD
    return logits, target


def manual_loss(logits, target, eps):
    """(1 - eps) * nll + eps * mean over the vocabulary of -log p, summed over real tokens."""
    total = torch.tensor(0.0, dtype=torch.float64)
    logp = logits.double().log_softmax(-1)
    for b in range(target.size(0)):
        for t in range(target.size(1)):
            gold = int(target[b, t])
            if gold == PAD:
                continue
            nll = -logp[b, t, gold]
            smooth = -logp[b, t].mean()
            total += (1 - eps) * nll + eps * smooth
    return total


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_sequence_loss_matches_manual_computation(eps):
    logits, target = logits_and_target()
    loss = sequence_loss(logits, target, PAD, label_smoothing=eps)
    assert loss.dim() == 0 and loss.dtype == torch.float32
    assert loss.item() == pytest.approx(manual_loss(logits, target, eps).item(), rel=1e-5)


def test_sequence_loss_without_smoothing_is_summed_gather():
    logits, target = logits_and_target()
    logp = logits.log_softmax(-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    expected = -(logp * target.ne(PAD)).sum()
    assert torch.allclose(sequence_loss(logits, target, PAD), expected, atol=1e-5)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_padding_positions_contribute_nothing(eps):
    logits, target = logits_and_target()
    changed = logits.clone()
    changed[target.eq(PAD)] = torch.randn(int(target.eq(PAD).sum()), V) * 10
    assert not torch.equal(changed, logits)
    same = sequence_loss(changed, target, PAD, eps)
    assert torch.equal(sequence_loss(logits, target, PAD, eps), same)
    changed[0, 0, 0] += 1.0  # a real position does count
    assert not torch.equal(sequence_loss(changed, target, PAD, eps), same)


def test_sequence_loss_computes_in_fp32_and_all_pad_is_zero():
    logits, target = logits_and_target()
    half = sequence_loss(logits.to(torch.bfloat16), target, PAD, 0.1)
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(sequence_loss(logits, target, PAD, 0.1).item(), rel=2e-2)
    assert sequence_loss(logits, torch.full_like(target, PAD), PAD, 0.1).item() == 0.0


def test_loss_skipping_padding_equals_full_logits():
    model, data = tiny_transformer(), random_examples()
    batch = collate(data, list(range(len(data))))
    full = torch.nn.functional.cross_entropy(
        model(batch.src, batch.tgt_in).flatten(0, 1),
        batch.tgt_out.flatten(),
        ignore_index=vocab.PAD,
        reduction="sum",
    )
    fast = batch_loss(model, batch.src, batch.tgt_in, batch.tgt_out, vocab.PAD)
    assert fast.item() == pytest.approx(full.item(), rel=1e-5)


def test_coverage_loss_adds_lambda_times_the_penalty_at_real_positions():
    cfg = ModelConfig(hidden_dim=16, emb_dim=12, dropout=0.0, coverage=True)
    model = build_model(cfg, TINY_VOCAB, TINY_VOCAB).eval()
    data = random_examples()
    batch = collate(data, list(range(len(data))))
    args = (model, batch.src, batch.tgt_in, batch.tgt_out, vocab.PAD)
    keep = batch.tgt_out.ne(vocab.PAD)
    _, penalty = model(batch.src, batch.tgt_in, keep, coverage_penalty=True)
    assert penalty.item() > 0
    assert batch_loss(*args, 0.1, 0.5).item() == pytest.approx(
        batch_loss(*args, 0.1).item() + 0.5 * penalty.item(), rel=1e-5
    )


def test_constant_schedule_warms_up_linearly_then_stays_flat():
    schedule = Schedule(TrainConfig(lr=1e-3, warmup_steps=4, min_lr=0.0))
    assert [schedule.lr(s) for s in range(1, 5)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert [schedule.lr(s) for s in (5, 50, 5000)] == pytest.approx([1e-3] * 3)
    flat = Schedule(TrainConfig(lr=1e-3, warmup_steps=0))
    assert [flat.lr(s) for s in (1, 2, 1000)] == [1e-3] * 3


def test_noam_peaks_at_warmup_then_decays_as_inverse_sqrt():
    schedule = Schedule(TrainConfig(schedule="noam", lr=2e-3, warmup_steps=100, min_lr=0.0))
    rates = [schedule.lr(s) for s in range(1, 1001)]
    assert max(rates) == pytest.approx(2e-3)
    assert rates.index(max(rates)) + 1 == 100
    assert schedule.lr(50) == pytest.approx(1e-3)
    for step in (101, 400, 1000, 10_000):
        assert schedule.lr(step) == pytest.approx(2e-3 * math.sqrt(100 / step))
    assert all(rates[i] > rates[i + 1] for i in range(99, len(rates) - 1))


def test_min_lr_floors_the_decay_but_not_the_warmup():
    schedule = Schedule(TrainConfig(schedule="noam", lr=1e-3, warmup_steps=100, min_lr=2e-4))
    assert schedule.lr(1) == pytest.approx(1e-5)  # below min_lr while warming up
    assert schedule.lr(400) == pytest.approx(5e-4)
    assert schedule.lr(10**6) == pytest.approx(2e-4)  # floored once decaying


def plateau(**overrides):
    cfg = {"schedule": "plateau", "lr": 1e-3, "plateau_patience": 2, "min_lr": 0.0, **overrides}
    return Schedule(TrainConfig(**cfg))


def test_plateau_halves_after_patience_plus_one_bad_validations():
    schedule = plateau()
    schedule.on_validation(2.0)
    schedule.on_validation(1.5)  # improving: nothing changes
    assert schedule.lr(10) == pytest.approx(1e-3)
    schedule.on_validation(1.5)
    schedule.on_validation(1.7)
    assert schedule.lr(10) == pytest.approx(1e-3)  # patience (2) not yet exceeded
    schedule.on_validation(1.6)
    assert schedule.lr(10) == pytest.approx(5e-4)
    for _ in range(3):
        schedule.on_validation(1.6)
    assert schedule.lr(10) == pytest.approx(2.5e-4)
    schedule.on_validation(1.0)  # an improvement resets the count
    schedule.on_validation(1.1)
    schedule.on_validation(1.1)
    assert schedule.lr(10) == pytest.approx(2.5e-4)


def test_plateau_never_goes_below_min_lr():
    schedule = plateau(plateau_patience=0, min_lr=1e-4)
    schedule.on_validation(1.0)
    for _ in range(20):
        schedule.on_validation(1.0)
    assert schedule.lr(10) == pytest.approx(1e-4)


def test_other_schedules_ignore_validations():
    schedule = Schedule(TrainConfig(lr=1e-3, plateau_patience=0))
    for loss in (1.0, 2.0, 3.0, 4.0):
        schedule.on_validation(loss)
    assert schedule.lr(10) == pytest.approx(1e-3)


def test_plateau_state_dict_round_trip_restores_behaviour():
    original = plateau()
    for loss in (2.0, 1.5, 1.6, 1.6):  # best 1.5, two bad validations so far
        original.on_validation(loss)
    state = json.loads(json.dumps(original.state_dict()))  # as stored in a checkpoint
    resumed = plateau()
    resumed.load_state_dict(state)
    assert resumed.state_dict() == original.state_dict()
    # The third bad validation halves the rate only for a schedule that remembers the first two.
    fresh = plateau()
    for schedule in (original, resumed, fresh):
        schedule.on_validation(1.6)
    assert original.lr(10) == resumed.lr(10) == pytest.approx(5e-4)
    assert fresh.lr(10) == pytest.approx(1e-3)
    for loss in (1.7, 1.8, 1.9, 1.4, 1.5):
        original.on_validation(loss)
        resumed.on_validation(loss)
        assert resumed.lr(10) == original.lr(10)
    assert resumed.state_dict() == original.state_dict()


def test_fresh_plateau_state_survives_json():
    state = json.loads(json.dumps(plateau().state_dict()))
    resumed = plateau()
    resumed.load_state_dict(state)
    resumed.on_validation(5.0)  # the first validation is always an improvement
    assert resumed.lr(10) == pytest.approx(1e-3) and resumed.state_dict()["best"] == 5.0


def test_apply_sets_every_param_group():
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))]
    cfg = TrainConfig(lr=1e-3, warmup_steps=4, optimizer="adamw", weight_decay=0.01)
    optimizer = build_optimizer(cfg, [{"params": params[:1]}, {"params": params[1:]}])
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.param_groups[0]["betas"] == cfg.betas
    assert Schedule(cfg).apply(optimizer, 2) == pytest.approx(5e-4)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([5e-4, 5e-4])
    assert type(build_optimizer(TrainConfig(), params)) is torch.optim.Adam


def test_adam_takes_the_fused_kernel_and_matches_the_loop():
    """Fused where every parameter allows it; the same updates as PyTorch's per-tensor
    loop, up to rounding."""
    torch.manual_seed(0)
    weights = [torch.randn(5, 3), torch.randn(7)]
    cfg = TrainConfig(lr=1e-2, betas=(0.9, 0.98))
    fused = [torch.nn.Parameter(w.clone()) for w in weights]
    loop = [torch.nn.Parameter(w.clone()) for w in weights]
    optimizer = build_optimizer(cfg, fused)
    assert optimizer.defaults["fused"] is True
    reference = torch.optim.Adam(loop, lr=1e-2, betas=(0.9, 0.98), foreach=False)
    for _ in range(5):
        grads = [torch.randn_like(w) for w in weights]
        for params, opt in ((fused, optimizer), (loop, reference)):
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()
            opt.step()
    for a, b in zip(fused, loop, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    integer = torch.nn.Parameter(torch.zeros(2, dtype=torch.int64), requires_grad=False)
    assert not build_optimizer(cfg, [integer]).defaults["fused"]


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_fused_smoothed_cross_entropy_matches_pytorch(eps):
    from seq2seq.training.loss import smoothed_cross_entropy

    torch.manual_seed(0)
    logits = torch.randn(7, 11, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 11, (7,))
    ours = smoothed_cross_entropy(logits, target, eps)
    (grad,) = torch.autograd.grad(ours, logits)
    ref = torch.nn.functional.cross_entropy(logits, target, label_smoothing=eps, reduction="sum")
    (ref_grad,) = torch.autograd.grad(ref, logits)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    assert torch.allclose(grad.double(), ref_grad, atol=1e-6)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_output_layer_fused_with_the_loss_matches_pytorch(eps, bias):
    """Loss and gradients of features, weight and bias equal PyTorch's linear layer and
    cross-entropy, over blocks that do not divide the tokens (3 rows of 11 logits)."""
    from seq2seq.training.loss import linear_cross_entropy

    torch.manual_seed(0)
    layer = torch.nn.Linear(5, 11, bias=bias)
    features = torch.randn(10, 5, requires_grad=True)
    target = torch.randint(0, 11, (10,))
    ours = linear_cross_entropy(features * 1.0, layer, target, eps, block=33)
    got = torch.autograd.grad(2.0 * ours, [features, *layer.parameters()])
    logits = layer(features * 1.0)
    ref = torch.nn.functional.cross_entropy(logits, target, label_smoothing=eps, reduction="sum")
    want = torch.autograd.grad(2.0 * ref, [features, *layer.parameters()])
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # validation: the loss alone
        torch.testing.assert_close(linear_cross_entropy(features, layer, target, eps), ref)


@pytest.mark.parametrize("bias", [True, False])
def test_fused_output_layer_is_exact_where_the_gold_probability_underflows(bias):
    """Logits over 150 apart (the gold token's probability is 0 in fp32) and a target
    repeated within and across blocks: the loss and gradients still equal float64
    PyTorch's, none of them infinite."""
    from seq2seq.training.loss import linear_cross_entropy

    torch.manual_seed(1)
    layer = torch.nn.Linear(4, 9, bias=bias)
    with torch.no_grad():
        layer.weight.mul_(100.0)
    features = torch.randn(12, 4, requires_grad=True)
    target = torch.tensor([3, 3, 0, 8, 3, 1, 1, 5, 3, 0, 2, 3])
    ours = linear_cross_entropy(features, layer, target, 0.1, block=36)
    got = torch.autograd.grad(ours, [features, *layer.parameters()])
    params64 = [p.detach().double().requires_grad_() for p in (features, *layer.parameters())]
    logits = torch.nn.functional.linear(*params64)
    assert (logits.max(1).values - logits.gather(1, target[:, None]).squeeze(1)).max() > 150
    ref = torch.nn.functional.cross_entropy(logits, target, label_smoothing=0.1, reduction="sum")
    want = torch.autograd.grad(ref, params64)
    assert torch.isfinite(ours)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-3)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-4)


def test_fused_output_layer_under_bf16_autocast_matches_the_layers_products():
    """Under autocast the products run in bf16 as the layer's would; the loss and the
    gradients stay within bf16 rounding of the unfused path."""
    from seq2seq.training.loss import linear_cross_entropy, smoothed_cross_entropy

    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 50)
    features = torch.randn(40, 16, requires_grad=True)
    target = torch.randint(0, 50, (40,))
    results = []
    for fused in (True, False):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if fused:
                loss = linear_cross_entropy(features, layer, target, 0.1, block=500)
            else:
                loss = smoothed_cross_entropy(layer(features), target, 0.1)
        assert loss.dtype == torch.float32
        results.append((loss, *torch.autograd.grad(loss, [features, *layer.parameters()])))
    for a, b in zip(*results, strict=True):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


def test_fp16_autocast_keeps_small_gradients_through_loss_scaling():
    """Under fp16 autocast the loss stays unfused: the logits' gradient of the unlikely
    classes (~2e-9, below fp16's smallest) survives when the loss is scaled first, as
    a GradScaler does; made before scaling, it would be flushed to zero."""
    from seq2seq.training.loss import linear_cross_entropy

    layer = torch.nn.Linear(4, 50, bias=False)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[0] = 5.0  # class 0 at logit 20, the others at 0
    features, target = torch.ones(8, 4), torch.zeros(8, dtype=torch.long)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = linear_cross_entropy(features, layer, target, 0.0)
    (loss * 2.0**16).backward()
    assert bool((layer.weight.grad[1:] > 0).all())


@pytest.mark.parametrize("arch", ["transformer", "rnn"])
def test_batch_loss_fuses_the_output_layer_of_both_families(arch):
    """batch_loss through the fused output layer gives the loss and gradients of the
    logits' loss (eval mode: no dropout); a copy head has no plain output layer and
    keeps the unfused path."""
    from seq2seq.training.loss import smoothed_cross_entropy

    batch = collate(random_examples(6, seed=3), list(range(6)))
    keep = batch.tgt_out.ne(PAD)
    for copy in (False, True):
        torch.manual_seed(0)
        sizes = {"ff_dim": 32} if arch == "transformer" else {"emb_dim": 16}
        cfg = ModelConfig(arch=arch, hidden_dim=16, copy=copy, **sizes)
        model = build_model(cfg, TINY_VOCAB, TINY_VOCAB).eval()
        assert (model.output_layer is None) is copy
        params = list(model.parameters())
        loss = batch_loss(model, batch.src, batch.tgt_in, batch.tgt_out, PAD, 0.1)
        logits = model(batch.src, batch.tgt_in, keep)
        ref = smoothed_cross_entropy(logits, batch.tgt_out[keep], 0.1)
        torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-4)
        got = torch.autograd.grad(loss, params, allow_unused=True)
        want = torch.autograd.grad(ref, params, allow_unused=True)
        for a, b in zip(got, want, strict=True):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="no plain output layer"):
        model(batch.src, batch.tgt_in, keep, project=False)
