import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recpar.model.config import ModelConfig
from recpar.model.recommender import CausalSelfAttention, Recommender, attention_mask

N_ITEMS = 50


def make(seed=0, text_dim=0, **over):
    cfg = ModelConfig.named("tiny", n_layers=2, max_seq_len=16, text_dim=text_dim, **over)
    torch.manual_seed(seed)
    text = torch.randn(N_ITEMS + 1, text_dim) if text_dim else None
    return Recommender(cfg, N_ITEMS, text).eval()


def test_shapes_and_pad_column():
    m = make()
    x = torch.tensor([[0, 0, 3, 4, 5], [1, 2, 3, 4, 5]])
    h = m(x)
    assert h.shape == (2, 5, m.cfg.d_model)
    assert m.item_embeddings().shape == (N_ITEMS + 1, m.cfg.d_model)
    assert m.logits(h).shape == (2, 5, N_ITEMS + 1)
    s = m.score_last(x)
    assert s.shape == (2, N_ITEMS + 1)
    assert torch.isneginf(s[:, 0]).all() and torch.isfinite(s[:, 1:]).all()
    assert m.loss(x, x).dim() == 0


def test_causal():
    m = make()
    x = torch.tensor([[0, 7, 3, 9, 4, 5, 6, 2]])
    y = x.clone()
    y[0, 5] = 11
    hx, hy = m(x), m(y)
    assert torch.equal(hx[:, :5], hy[:, :5])  # earlier positions bit-identical
    assert not torch.allclose(hx[:, 5:], hy[:, 5:])


def test_left_padding_invariance():
    m = make()
    seq = [7, 3, 9, 4]
    short = torch.tensor([seq])
    long = torch.tensor([[0] * 12 + seq])
    h_s, h_l = m(short), m(long)
    assert torch.allclose(h_s[0, -1], h_l[0, -1], atol=1e-5)
    assert torch.allclose(h_s[0], h_l[0, -4:], atol=1e-5)  # every real position
    assert torch.allclose(m.score_last(short), m.score_last(long), atol=1e-4)


def test_all_pad_rows_no_nan():
    m = make()
    m.train()
    x = torch.tensor([[0, 0, 0, 0], [0, 1, 2, 3]])
    h = m(x)
    assert torch.isfinite(h).all()
    mask = attention_mask(x)
    assert mask[0, 0].sum(-1).tolist() == [1, 1, 1, 1]  # each pad query sees only itself
    loss = m.loss(x, torch.tensor([[0, 0, 0, 0], [0, 2, 3, 4]]))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    # nothing to predict at all: loss 0, not NaN
    zeros = torch.zeros(2, 4, dtype=torch.long)
    assert float(m.loss(zeros, zeros).detach()) == 0.0


def test_loss_ignores_padding():
    m = make()
    x = torch.tensor([[0, 0, 4, 6, 8], [0, 3, 5, 7, 9]])
    y = torch.tensor([[0, 0, 6, 8, 10], [0, 5, 7, 9, 11]])
    # by hand: mean cross-entropy over the 7 positions with a real input and a real target,
    # softmax over items 1..n (the pad column excluded)
    logits = m.logits(m(x))[..., 1:]
    valid = (x != 0) & (y != 0)
    manual = F.cross_entropy(logits[valid], y[valid] - 1)
    assert torch.allclose(m.loss(x, y), manual, atol=1e-6)
    # a target after pure padding (x[0, 1] = 0) and targets at pad positions do not count
    y2 = y.clone()
    y2[0, 0], y2[0, 1] = 13, 17
    assert torch.equal(m.loss(x, y2), m.loss(x, y))
    total, count = m.loss_sum(x, y)
    assert int(count) == 7 and torch.allclose(total / 7, manual, atol=1e-6)
    # more left padding: same loss
    xp = F.pad(x, (3, 0))
    yp = F.pad(y, (3, 0))
    assert torch.allclose(m.loss(xp, yp), m.loss(x, y), atol=1e-5)


def test_output_is_tied_to_item_table():
    m = make(text_dim=8)
    x = torch.tensor([[0, 1, 2, 3]])
    h = m(x)
    table = m.item_embeddings()
    assert torch.allclose(m.logits(h)[..., 1:], (h @ table.t())[..., 1:])
    big = [n for n, p in m.named_parameters() if p.shape[0] == N_ITEMS + 1]
    assert big == ["item_id_emb.weight"]  # no separate output matrix
    # item 40 is only a target, never an input: it gets a gradient through the output path
    m.train()
    m.loss(x, torch.tensor([[0, 2, 3, 40]])).backward()
    g = m.item_id_emb.weight.grad
    assert g[40].abs().sum() > 0 and g[0].abs().sum() == 0  # pad row never trained


def test_deterministic_given_seed():
    a, b, c = make(seed=1), make(seed=1), make(seed=2)
    x = torch.tensor([[0, 5, 6, 7]])
    for (na, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), na
    assert torch.equal(a.score_last(x), b.score_last(x))
    assert not torch.equal(a.score_last(x), c.score_last(x))


def test_text_fusion_changes_outputs():
    m = make(text_dim=8)
    x = torch.tensor([[0, 5, 6, 7]])
    before = m.score_last(x)
    assert torch.allclose(m.item_embeddings(),
                          m.item_id_emb.weight + m.text_proj(m.text_emb))
    m.text_emb[6] += 1.0  # different text for item 6 (an input) changes every score
    after = m.score_last(x)
    assert not torch.allclose(before, after)
    assert not any(n == "text_emb" for n, _ in m.named_parameters())  # frozen buffer
    assert "text_emb" not in m.state_dict()
    plain = make(text_dim=0)
    assert plain.text_proj is None


def test_constructor_and_input_errors():
    cfg = ModelConfig.named("tiny", n_layers=1, max_seq_len=4, text_dim=8)
    with pytest.raises(ValueError, match="needs a text embedding table"):
        Recommender(cfg, 10, None)
    with pytest.raises(ValueError, match=r"shape \(11, 7\), expected .*\(11, 8\)"):
        Recommender(cfg, 10, torch.zeros(11, 7))
    with pytest.raises(ValueError, match="cfg.text_dim=0"):
        Recommender(ModelConfig.named("tiny", n_layers=1), 10, torch.zeros(11, 8))
    m = Recommender(ModelConfig.named("tiny", n_layers=1, max_seq_len=4), 10)
    with pytest.raises(ValueError, match="sequence length 5 exceeds max_seq_len=4"):
        m(torch.ones(1, 5, dtype=torch.long))


def test_qkv_layout_splits_into_whole_heads():
    """A contiguous column split of qkv (and row split of proj) gives each shard whole heads:
    summing the shards' partial outputs reproduces the full attention (what megatron-core's
    ColumnParallelLinear / RowParallelLinear will do with tp=2)."""
    cfg = ModelConfig.named("tiny", n_layers=1, dropout=0.0)
    torch.manual_seed(0)
    full = CausalSelfAttention(cfg).eval()
    x = torch.randn(2, 6, cfg.d_model)
    mask = attention_mask(torch.tensor([[0, 0, 1, 2, 3, 4], [1, 2, 3, 4, 5, 6]]))
    ref = full(x, mask)
    tp, d = 2, cfg.d_model
    out = torch.zeros_like(ref)
    for r in range(tp):
        shard = CausalSelfAttention(cfg).eval()
        rows = slice(r * 3 * d // tp, (r + 1) * 3 * d // tp)
        cols = slice(r * d // tp, (r + 1) * d // tp)
        shard.qkv = nn.Linear(d, 3 * d // tp)
        shard.proj = nn.Linear(d // tp, d)
        with torch.no_grad():
            shard.qkv.weight.copy_(full.qkv.weight[rows])
            shard.qkv.bias.copy_(full.qkv.bias[rows])
            shard.proj.weight.copy_(full.proj.weight[:, cols])
            shard.proj.bias.copy_(full.proj.bias if r == 0 else torch.zeros(d))
        out += shard(x, mask)
    assert torch.allclose(out, ref, atol=1e-5)


def test_an_empty_batch_shard_gives_zero_loss_sum_and_gradients():
    """A data-parallel rank's share of a short last batch can have no rows (3 rows over 4
    ranks): its loss sum and count are 0, and backward works, so the global mean is right."""
    m = make().train()
    x = torch.zeros(0, 16, dtype=torch.long)  # [B = 0, L]
    total, count = m.loss_sum(x, x)
    assert float(total) == 0.0 and int(count) == 0
    total.backward()
    assert all(p.grad is None or torch.all(p.grad == 0) for p in m.parameters())
