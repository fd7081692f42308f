"""The shared model battery: every model configuration must honour the contract."""

import pytest
import torch

from seq2seq.config import ModelConfig
from seq2seq.models.build import build_model
from seq2seq.models.transformer import TransformerSeq2Seq
from seq2seq.search import Rules, greedy

PAD, BOS, EOS = 0, 1, 2
SRC_V, TGT_V = 19, 23  # source ids are target ids too (copy heads need that)

VARIANTS = {
    "gru-none": dict(attention="none"),
    "gru-bahdanau": dict(attention="bahdanau"),
    "gru-luong-dot": dict(attention="luong", attention_score="dot"),
    "gru-luong-general-nofeed": dict(attention="luong", input_feeding=False),
    "lstm-luong-general": dict(cell="lstm", attention="luong", enc_layers=2, dec_layers=2),
    "lstm-bahdanau-uni": dict(cell="lstm", attention="bahdanau", bidirectional=False),
    "gru-tied": dict(attention="bahdanau", emb_dim=16, tie_embeddings=True),
    "transformer-pre": dict(arch="transformer", ff_dim=32, enc_layers=2, dec_layers=2),
    "transformer-post-learned": dict(
        arch="transformer", ff_dim=32, norm="post", positions="learned", tie_embeddings=True
    ),
    "gru-bahdanau-copy": dict(attention="bahdanau", copy=True),
    "lstm-luong-copy": dict(cell="lstm", attention="luong", copy=True),
    "transformer-copy": dict(arch="transformer", ff_dim=32, copy=True),
    "gru-bahdanau-coverage": dict(attention="bahdanau", coverage=True),
    "lstm-coverage-copy": dict(cell="lstm", attention="bahdanau", coverage=True, copy=True),
}


def make(name):
    """A tiny model of one variant, in eval mode (no dropout)."""
    torch.manual_seed(0)
    variant = VARIANTS[name]
    sizes = {} if variant.get("arch") == "transformer" else {"emb_dim": 12}
    cfg = ModelConfig(**{"hidden_dim": 16, "dropout": 0.0, **sizes, **variant})
    return build_model(cfg, SRC_V, TGT_V, pad_id=PAD).eval()


def batch():
    g = torch.Generator().manual_seed(1)
    src = torch.randint(3, SRC_V, (3, 7), generator=g)
    src[0, 5:] = PAD
    src[2, 3:] = PAD
    tgt = torch.randint(3, TGT_V, (3, 6), generator=g)
    tgt[:, 0] = BOS
    return src, tgt


@pytest.fixture(params=sorted(VARIANTS))
def model(request):
    return make(request.param)


def test_forward_shapes(model):
    src, tgt = batch()
    assert model(src, tgt).shape == (3, 6, TGT_V)


def test_step_shapes_and_attention_mask(model):
    src, _ = batch()
    state = model.init_state(model.encode(src))
    log_probs, state, attn = model.step(torch.full((3,), BOS), state)
    assert log_probs.shape == (3, TGT_V)
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(3), atol=1e-5)
    if attn is not None:
        assert attn.shape == (3, 7)
        assert torch.all(attn[src.eq(PAD)] == 0)
        assert torch.allclose(attn.sum(-1), torch.ones(3), atol=1e-5)


def test_forward_equals_stepwise(model):
    src, tgt = batch()
    full = torch.log_softmax(model(src, tgt), -1)
    state = model.init_state(model.encode(src))
    for t in range(tgt.size(1)):
        log_probs, state, _ = model.step(tgt[:, t], state)
        assert torch.allclose(log_probs, full[:, t], atol=1e-5)


def test_steps_that_skip_attention_weights_give_the_same_log_probs(model):
    """``init_state(..., attention=False)``: the Transformer skips the weights it only
    computes to return (never a copy head's, which reads them); the log-probabilities
    stay the same (up to rounding: its last layer then attends through SDPA), also
    after a reorder."""
    src, tgt = batch()
    encoded = model.encode(src)
    kept, skipped = model.init_state(encoded), model.init_state(encoded, attention=False)
    index = torch.tensor([2, 0, 1])
    for t in range(tgt.size(1)):
        want, kept, weights = model.step(tgt[:, t], kept)
        got, skipped, none = model.step(tgt[:, t], skipped)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        if isinstance(model, TransformerSeq2Seq) and model.copy is None:
            assert none is None
        else:
            torch.testing.assert_close(none, weights, rtol=0, atol=0)
        kept, skipped = model.reorder(kept, index), model.reorder(skipped, index)


def test_padding_never_changes_real_positions(model):
    src, tgt = batch()
    wide = torch.cat([src, torch.full((3, 4), PAD)], dim=1)
    assert torch.allclose(model(src, tgt), model(wide, tgt), atol=1e-5)
    # One sentence alone (no padding at all) gives the same as inside the batch.
    alone = model(src[2:3, :3], tgt[2:3])
    assert torch.allclose(alone, model(src, tgt)[2:3], atol=1e-5)


def test_reorder_selects_rows(model):
    src, _ = batch()
    state = model.init_state(model.encode(src))
    index = torch.tensor([2, 0, 2])
    a, _, _ = model.step(torch.full((3,), BOS), model.reorder(state, index))
    b, _, _ = model.step(torch.full((3,), BOS), state)
    assert torch.allclose(a, b[index], atol=1e-6)


def test_batched_greedy_equals_one_by_one(model):
    src, _ = batch()
    rules = Rules(bos=BOS, eos=EOS, max_len_a=1.0, max_len_b=3)
    together = greedy(model, src, rules)
    for i in range(src.size(0)):
        row = src[i : i + 1, : int(src[i].ne(PAD).sum())]
        alone = greedy(model, row, rules)[0]
        assert alone.tokens == together[i].tokens
        assert alone.score == pytest.approx(together[i].score, abs=1e-4)


def test_tied_embeddings_share_storage():
    m = make("gru-tied")
    assert m.decoder.out.weight.data_ptr() == m.decoder.embed.weight.data_ptr()
    m = make("transformer-post-learned")
    assert m.out.weight.data_ptr() == m.tgt_embed.tokens.weight.data_ptr()
    assert m.src_embed.tokens.weight.data_ptr() != m.tgt_embed.tokens.weight.data_ptr()


def test_transformer_shares_all_three_embeddings():
    cfg = ModelConfig(arch="transformer", hidden_dim=16, ff_dim=32, share_embeddings=True)
    m = build_model(cfg, TGT_V, TGT_V, pad_id=PAD)
    ptrs = {
        m.out.weight.data_ptr(),
        m.tgt_embed.tokens.weight.data_ptr(),
        m.src_embed.tokens.weight.data_ptr(),
    }
    assert len(ptrs) == 1


def test_transformer_cached_decoding_equals_full_recompute():
    """Incremental decoding with the KV cache == recomputing the whole prefix, in fp32."""
    m = make("transformer-pre")
    src, tgt = batch()
    encoded = m.encode(src)
    state = m.init_state(encoded)
    worst = 0.0
    for t in range(tgt.size(1)):
        cached, state, _ = m.step(tgt[:, t], state)
        full = torch.log_softmax(m.out(m.decode_states(encoded, tgt[:, : t + 1]))[:, -1], -1)
        worst = max(worst, (cached - full).abs().max().item())
    assert worst < 1e-5


def test_transformer_step_leaves_its_input_state_usable():
    torch.manual_seed(0)
    cfg = ModelConfig(arch="transformer", hidden_dim=16, ff_dim=32, dropout=0.0)
    model = build_model(cfg, 20, 20).eval()
    state = model.init_state(model.encode(torch.randint(3, 20, (2, 5))))
    prev = torch.tensor([1, 1])
    first, _, _ = model.step(prev, state)
    again, _, _ = model.step(prev, state)  # same input state: same output
    assert torch.equal(first, again)


# ---------------------------------------------------------------------------- the copy head

COPIERS = [name for name in VARIANTS if VARIANTS[name].get("copy")]


def _force_gate(model, bias: float) -> None:
    """p_gen = sigmoid(bias) for every input."""
    with torch.no_grad():
        model.copy.gate.weight.zero_()
        model.copy.gate.bias.fill_(bias)


@pytest.mark.parametrize("name", COPIERS)
def test_a_closed_gate_copies_the_source(name):
    model = make(name)
    _force_gate(model, -40.0)  # p_gen ~ 0: only copying
    src, _ = batch()
    rules = Rules(bos=BOS, eos=EOS, max_len_a=1.0, max_len_b=3, banned=(PAD, BOS))
    for row, hyp in zip(src.tolist(), greedy(model, src, rules), strict=True):
        assert hyp.tokens and set(hyp.tokens) <= set(row)


@pytest.mark.parametrize("name", COPIERS)
def test_an_open_gate_is_the_vocabulary_distribution(name):
    model = make(name)
    _force_gate(model, 40.0)  # p_gen ~ 1: only generating
    src, tgt = batch()
    assert torch.allclose(
        model(src, tgt), torch.log_softmax(model.project(model.features(src, tgt)), -1), atol=1e-5
    )


@pytest.mark.parametrize("name", COPIERS)
def test_copy_output_at_kept_positions_is_the_full_output_there(name):
    model = make(name)
    src, tgt = batch()
    keep = tgt.ne(PAD) & torch.rand(tgt.shape, generator=torch.Generator().manual_seed(0)).gt(0.3)
    assert torch.allclose(model(src, tgt, keep), model(src, tgt)[keep], atol=1e-6)


def test_a_copy_head_needs_source_ids_that_are_target_ids():
    cfg = ModelConfig(hidden_dim=16, emb_dim=12, copy=True)
    with pytest.raises(ValueError, match="every source id to be a target id"):
        build_model(cfg, 30, 20)


# ---------------------------------------------------------------------------- coverage

COVERED = [name for name in VARIANTS if VARIANTS[name].get("coverage")]


def _stepwise_attention(model, src, tgt):
    """Attention weights ``[batch, tgt_len, src_len]`` and final coverage, one step at a time."""
    state = model.init_state(model.encode(src))
    weights = []
    for t in range(tgt.size(1)):
        _, state, attn = model.step(tgt[:, t], state)
        weights.append(attn)
    return torch.stack(weights, 1), state.coverage


@pytest.mark.parametrize("name", COVERED)
def test_coverage_is_the_attention_received_so_far(name):
    model = make(name)
    src, tgt = batch()
    weights, coverage = _stepwise_attention(model, src, tgt)
    assert torch.allclose(coverage, weights.sum(1), atol=1e-6)
    assert coverage.masked_select(src.eq(PAD)).abs().max() == 0  # padding is never covered


@pytest.mark.parametrize("name", COVERED)
def test_coverage_penalty_is_the_sum_of_min_attention_and_coverage(name):
    model = make(name)
    src, tgt = batch()
    weights, _ = _stepwise_attention(model, src, tgt)
    expected = torch.zeros(tgt.shape)
    for t in range(tgt.size(1)):  # See et al. (2017): sum_i min(a_ti, c_ti), c_t = sum_{t'<t}
        expected[:, t] = torch.minimum(weights[:, t], weights[:, :t].sum(1)).sum(-1)
    out, penalty = model(src, tgt, coverage_penalty=True)
    assert torch.equal(out, model(src, tgt))
    assert penalty.item() == pytest.approx(expected.sum().item(), rel=1e-5)
    keep = torch.ones(tgt.shape, dtype=torch.bool)
    keep[:, 4:] = False
    assert model(src, tgt, keep, coverage_penalty=True)[1].item() == pytest.approx(
        expected[:, :4].sum().item(), rel=1e-5
    )
    assert expected[:, 0].abs().max() == 0 and expected.sum() > 0  # nothing covered at t=0


def test_coverage_enters_the_attention_score():
    model = make("gru-bahdanau-coverage")
    src, tgt = batch()
    before, _ = _stepwise_attention(model, src, tgt)
    with torch.no_grad():
        model.decoder.attention.coverage_proj.weight.mul_(50.0)
    after, _ = _stepwise_attention(model, src, tgt)
    assert torch.equal(before[:, 0], after[:, 0])  # no coverage yet at the first step
    assert not torch.allclose(before[:, 1:], after[:, 1:], atol=1e-3)


def test_a_coverage_penalty_needs_a_model_with_coverage():
    with pytest.raises(ValueError, match="built with coverage"):
        make("gru-bahdanau")(*batch(), coverage_penalty=True)
