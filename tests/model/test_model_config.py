import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from recpar.model.config import NAMED_SIZES, ModelConfig
from recpar.model.recommender import Recommender


def test_named_sizes_and_overrides():
    for size in ("tiny", "small", "base", "350m", "1b"):
        cfg = ModelConfig.named(size)
        assert cfg.d_model % cfg.n_heads == 0
    cfg = ModelConfig.named("tiny", n_layers=3, text_dim=384)
    assert (cfg.n_layers, cfg.text_dim, cfg.d_model) == (3, 384, NAMED_SIZES["tiny"]["d_model"])
    assert cfg.as_megatron_kwargs()["num_attention_heads"] == cfg.n_heads


def test_validation_names_the_numbers():
    with pytest.raises(ValueError, match="d_model=100 is not divisible by n_heads=3"):
        ModelConfig(d_model=100, n_heads=3)
    with pytest.raises(ValueError, match="unknown size 'huge'"):
        ModelConfig.named("huge")
    with pytest.raises(ValueError, match="unknown field.*n_layer\\b"):
        ModelConfig.named("tiny", n_layer=2)
    with pytest.raises(ValueError, match="n_layers=0"):
        ModelConfig(n_layers=0)
    with pytest.raises(ValueError, match="dropout=1.0"):
        ModelConfig(dropout=1.0)
    with pytest.raises(ValueError, match="text_dim=-1"):
        ModelConfig(text_dim=-1)


@pytest.mark.parametrize("text_dim", [0, 24])
def test_param_count_matches_module(text_dim):
    cfg = ModelConfig.named("tiny", n_layers=2, text_dim=text_dim)
    n_items = 57
    text = torch.randn(n_items + 1, text_dim) if text_dim else None
    model = Recommender(cfg, n_items, text)
    actual = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert cfg.param_count(n_items) == actual
    counts = cfg.param_counts(n_items)
    assert counts.blocks == sum(p.numel() for p in model.blocks.parameters())
    assert counts.item_id_emb == model.item_id_emb.weight.numel()


def test_named_sizes_land_where_their_comments_say():
    blocks = ModelConfig.named("tiny").param_counts(1).blocks
    assert 0.08e6 <= blocks <= 0.15e6, blocks
    # the larger sizes land where their names say
    assert 0.9e9 <= ModelConfig.named("1b").param_counts(1).blocks <= 1.4e9
    assert 0.25e9 <= ModelConfig.named("350m").param_counts(1).blocks <= 0.4e9


@pytest.mark.parametrize("text_dim", [0, 16])
def test_flops_per_token_against_torch_flop_counter(text_dim):
    """6N counts every parameter; torch's counter counts matmuls only (and skips SDPA on CPU),
    so: measured matmul FLOPs == 6 x (matmul weights) x tokens + text fusion, exactly; the
    attention term equals 3 x torch's forward SDPA formula (forward + 2x backward)."""
    cfg = ModelConfig.named("tiny", n_layers=2, max_seq_len=12, dropout=0.0, text_dim=text_dim)
    n_items, b, t = 90, 3, 12
    torch.manual_seed(0)
    model = Recommender(cfg, n_items, torch.randn(n_items + 1, text_dim) if text_dim else None)
    x = torch.randint(1, n_items + 1, (b, t))
    with FlopCounterMode(display=False) as counter:
        model.loss(x, x).backward()
    counts = counter.get_flop_counts()["Global"]
    matmul = sum(v for k, v in counts.items() if "mm" in str(k))
    d, f = cfg.d_model, cfg.d_ff
    non_matmul_params = cfg.n_layers * (3 * d + d + f + d + 4 * d) + 2 * d  # biases and norms
    attention = 12 * cfg.n_layers * d * t
    predicted = cfg.flops_per_token(n_items) * b * t + cfg.text_fusion_flops_per_step(n_items)
    assert matmul == predicted - attention * b * t - 6 * non_matmul_params * b * t
    hd = cfg.head_dim
    shape = (b, cfg.n_heads, t, hd)
    assert attention * b * t == 3 * cfg.n_layers * sdpa_flop_count(shape, shape, shape)


@pytest.mark.parametrize("size", list(NAMED_SIZES))
def test_model_flops_within_2_pct_of_torch_flop_counter_for_every_named_size(size):
    """One training step of the full-size model, counted by FlopCounterMode on the meta device
    (shapes only, no memory or compute; there SDPA runs its math path, whose bmm the counter
    sees, while the CPU kernel is not counted at all: the 7 % "over-count" issue 19 saw on tiny
    was that missing attention). Measured here: +0.6 % tiny, +0.05 % 1b (6N counts biases and
    norms as matmul parameters)."""
    cfg = ModelConfig.named(size, dropout=0.0, text_dim=384)
    n_items, b = 1682, 4
    with torch.device("meta"):
        model = Recommender(cfg, n_items, torch.empty(n_items + 1, cfg.text_dim))
        x = torch.randint(1, n_items + 1, (b, cfg.max_seq_len))
    with FlopCounterMode(display=False) as counter:
        model.loss(x, x).backward()
    predicted = cfg.model_flops(n_items, samples=b, steps=1)
    assert predicted == pytest.approx(counter.get_total_flops(), rel=0.02)
