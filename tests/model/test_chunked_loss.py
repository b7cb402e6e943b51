"""The memory-lean training loss (recpar.model.loss.chunked_tied_cross_entropy_sum, switched on
by ModelConfig.cross_entropy_chunk_size) equals the whole-logits loss: value and every
parameter's gradient, in float64 to rounding, with left padding and ignored positions."""

import pytest
import torch

from recpar.model.config import ModelConfig
from recpar.model.loss import chunked_tied_cross_entropy_sum, cross_entropy_sum, mask_targets
from recpar.model.recommender import Recommender

N_ITEMS, B, L = 97, 5, 12


def _model(chunk: int, text_dim: int) -> Recommender:
    torch.manual_seed(0)
    cfg = ModelConfig.named("tiny", max_seq_len=L, dropout=0.0, text_dim=text_dim,
                            cross_entropy_chunk_size=chunk)
    text = torch.randn(N_ITEMS + 1, text_dim) if text_dim else None
    return Recommender(cfg, N_ITEMS, text).double()


def _batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(1, N_ITEMS + 1, (B, L), generator=g)
    y = torch.randint(1, N_ITEMS + 1, (B, L), generator=g)
    x[0, :7] = 0  # left padding: these positions do not count
    y[1, 3] = 0  # a padding target does not count either
    return x, y


@pytest.mark.parametrize("chunk", [1, 7, B * L, 1000])  # 7 does not divide B x L = 60
@pytest.mark.parametrize("text_dim", [0, 16])
def test_chunked_loss_and_gradients_equal_the_whole_logits(chunk, text_dim):
    x, y = _batch()
    whole, lean = _model(0, text_dim), _model(chunk, text_dim)
    (s0, n0), (s1, n1) = whole.loss_sum(x, y), lean.loss_sum(x, y)
    assert n0 == n1 and n0 < B * L
    torch.testing.assert_close(s1, s0, rtol=1e-12, atol=1e-10)
    s0.backward()
    s1.backward()
    for (name, p0), (_, p1) in zip(whole.named_parameters(), lean.named_parameters()):
        torch.testing.assert_close(p1.grad, p0.grad, rtol=1e-10, atol=1e-12, msg=name)


def test_under_bf16_autocast_it_equals_the_whole_logits_loss_under_autocast():
    """Both run their matmuls in bf16 and the softmax in fp32; they differ only in where bf16
    rounds (the whole path rounds each gradient's full sum over positions once, the chunked
    one each chunk's part). Tolerance: bf16's unit roundoff u = 2^-8 ≈ 3.9e-3, relative to a
    gradient's norm; the loss, summed in fp32 from the same bf16 logits, to fp32 rounding."""
    x, y = _batch()
    whole, lean = _model(0, 16).float(), _model(7, 16).float()
    grads, sums = [], []
    for model in (whole, lean):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            total, _ = model.loss_sum(x, y)
        assert total.dtype == torch.float32
        total.backward()
        sums.append(total)
        grads.append({n: p.grad for n, p in model.named_parameters()})
    torch.testing.assert_close(sums[1], sums[0], rtol=1e-5, atol=0)
    u = 2.0 ** -8
    for name, g0 in grads[0].items():
        rel = float((grads[1][name] - g0).norm() / g0.norm())
        assert rel <= u, (name, rel)
    # and it is bf16 arithmetic, not fp32: the same model in fp32 differs by more than that
    fp32 = _model(7, 16).float()
    fp32.loss_sum(x, y)[0].backward()
    g32 = fp32.item_id_emb.weight.grad
    assert float((grads[1]["item_id_emb.weight"] - g32).norm() / g32.norm()) > 1e-4


def test_without_gradients_only_the_value_is_computed():
    x, y = _batch()
    model = _model(0, 0)
    masked, _ = mask_targets(x, y)
    with torch.no_grad():
        hidden = model(x)
        table = model.item_embeddings()
        lean = chunked_tied_cross_entropy_sum(hidden, table, masked, 8)
        whole = cross_entropy_sum(model.logits(hidden, table), masked)
    assert not lean.requires_grad
    torch.testing.assert_close(lean, whole, rtol=1e-12, atol=1e-10)


def test_bad_chunk_sizes_are_named():
    with pytest.raises(ValueError, match="cross_entropy_chunk_size=-1"):
        ModelConfig.named("tiny", cross_entropy_chunk_size=-1)
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        chunked_tied_cross_entropy_sum(torch.zeros(2, 4), torch.zeros(3, 4),
                                       torch.zeros(2, dtype=torch.long), 0)


def test_deepspeed_refuses_it_before_any_rank_starts(small_prepared, tmp_path, capsys):
    from recpar.cli import main as recpar_main

    code = recpar_main(["train", "--scheme", "deepspeed", "--pp", "2", "--data",
                        str(small_prepared),
                        "--out", str(tmp_path / "run"), "--model-override",
                        "cross_entropy_chunk_size=64"])
    assert code != 0
    assert "scheme deepspeed's head computes its logits whole" in capsys.readouterr().err
    assert not (tmp_path / "run" / "spec.json").exists()
