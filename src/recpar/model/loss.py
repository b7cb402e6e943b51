"""The training loss's pieces, shared by every parallel form: which positions count, the
masked targets, the summed cross-entropy and the divisor that makes it a mean.

The loss of a global batch is sum(CE over valid positions) / N, N = valid positions of the
whole global batch (clamped to 1: an all-padding batch has loss 0). A data-parallel rank, a
pipeline micro-batch or a DeepSpeed micro-batch sums its own part and divides by the global N,
so the summed gradient equals the single-device one. The vocab-parallel cross-entropy of a
tensor-parallel head is `recpar.parallel.tensor_parallel.vocab_parallel_cross_entropy_sum`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from recpar.constants import IGNORE_INDEX, PAD_ITEM


def valid_positions(input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[B, L] bool: positions that count in the loss (a real target after a real input: a
    target after pure padding has no history to be predicted from). Data-parallel ranks count
    it over the whole global batch to normalise their local loss sums by the global count,
    which makes the averaged gradient equal the single-device one."""
    return (targets != PAD_ITEM) & (input_ids != PAD_ITEM)


def mask_targets(input_ids: torch.Tensor,
                 targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets [B, L] with IGNORE_INDEX at the positions that do not count, their number of
    valid positions as an int64 scalar). Shapes are static: no host sync."""
    if targets.shape != input_ids.shape:
        raise ValueError(f"Recommender: targets {tuple(targets.shape)} and input_ids "
                         f"{tuple(input_ids.shape)} differ in shape")
    valid = valid_positions(input_ids, targets)  # [B, L]
    return targets.masked_fill(~valid, IGNORE_INDEX), valid.sum()


def mean_divisor(valid_count: torch.Tensor) -> torch.Tensor:
    """N: the valid-position count clamped to 1, as float32 (what a loss sum is divided by)."""
    return valid_count.clamp(min=1).to(torch.float32)


def cross_entropy_sum(logits: torch.Tensor, masked_targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over the positions whose target is not IGNORE_INDEX.

    logits [..., L, V] against the whole item vocabulary (the pad column is -inf, so it takes
    no probability mass); masked_targets [..., L].
    """
    return F.cross_entropy(logits.flatten(0, -2), masked_targets.flatten(),
                           ignore_index=IGNORE_INDEX, reduction="sum")


def chunk_matmul_dtype(hidden: torch.Tensor, table: torch.Tensor) -> torch.dtype:
    """The dtype a chunked loss makes its logits in: autocast's (bf16) where it is on for the
    tensors' device, as autocast would cast the matmul; else the operands' promoted dtype.
    The chunked losses run with autocast off and cast explicitly (fp32 softmax)."""
    dev = hidden.device.type
    return (torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev)
            else torch.promote_types(hidden.dtype, table.dtype))


class _ChunkedTiedCrossEntropy(torch.autograd.Function):
    """sum CE(hidden @ table^T, targets) without the [N, V] logits held for backward.

    Forward walks the positions in chunks of `chunk` rows: logits of the chunk [chunk, V], its
    log-sum-exp and target logits, and, when a gradient is wanted, the gradient of the summed
    loss with respect to those logits (softmax − one-hot, zero on ignored rows), which gives
    the chunk's hidden gradient and adds to the table's at once; the chunk's logits are then
    freed. Backward only scales the saved gradients by the incoming one. Peak memory: one
    chunk of logits plus the two gradients (the sizes of `hidden` and `table`), instead of the
    whole [N, V] logits and their softmax; no logit is computed twice. The same scheme as the
    fused linear cross-entropy kernels of Liger-Kernel and Apple's Cut Cross-Entropy, which are
    Triton/CUDA only: no maintained CPU implementation exists, hence this one.
    """

    @staticmethod
    def forward(ctx, hidden, table, targets, chunk, mm_dtype):
        # hidden [N, d], table [V, d], targets [N] (IGNORE_INDEX where a position does not count)
        # mm_dtype: the matmuls' dtype (bf16 under autocast, which is off in here: the casts
        # are explicit, as autocast makes them on the whole path: bf16 logits, fp32 softmax)
        want_h, want_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.zeros_like(hidden) if want_h else None  # [N, d]
        grad_t = torch.zeros_like(table) if want_t else None  # [V, d]
        table_mm = table.to(mm_dtype)  # [V, d]
        soft_dtype = torch.promote_types(mm_dtype, torch.float32)  # softmax: fp32 or wider
        total = hidden.new_zeros((), dtype=soft_dtype)
        for s in range(0, hidden.shape[0], chunk):
            h, y = hidden[s:s + chunk].to(mm_dtype), targets[s:s + chunk]  # [c, d], [c]
            logits = (h @ table_mm.t()).to(soft_dtype)  # [c, V]
            logits[:, PAD_ITEM] = float("-inf")  # padding takes no probability mass
            valid = y != IGNORE_INDEX  # [c]
            y_safe = torch.where(valid, y, torch.ones_like(y))  # [c], a real item where ignored
            # log_softmax and softmax, not exp(logits - logsumexp): the fused kernels stay fast
            # where most probabilities underflow to denormals (at 63,001 items a hand-written
            # exp ran 25x slower on this CPU)
            picked = torch.log_softmax(logits, dim=-1).gather(1, y_safe[:, None]).squeeze(1)
            total = total - torch.where(valid, picked, torch.zeros_like(picked)).sum()
            if not (want_h or want_t):
                continue
            probs = torch.softmax(logits, dim=-1)  # [c, V]
            del logits
            probs[torch.arange(len(y), device=y.device), y_safe] -= 1.0
            probs.mul_(valid[:, None].to(probs.dtype))  # d(sum CE)/d(logits) [c, V]
            add_chunk_gradients(probs, h, table_mm, grad_h, grad_t, slice(s, s + chunk))
        ctx.save_for_backward(grad_h, grad_t)  # None where no gradient is wanted
        return total

    @staticmethod
    def backward(ctx, grad_out):
        return scaled_saved_gradients(ctx, grad_out, 3)


def add_chunk_gradients(dlogits: torch.Tensor, h: torch.Tensor, table_mm: torch.Tensor,
                        grad_h: torch.Tensor | None, grad_t: torch.Tensor | None,
                        rows: slice) -> None:
    """What a chunk's d(sum CE)/d(logits) [c, V] gives, in place: its rows of the hidden
    gradient (dlogits @ table) and its part of the table gradient (dlogits^T @ h), the
    matmuls in table_mm's dtype (a chunked cross-entropy's forward; None = not wanted)."""
    dlogits = dlogits.to(table_mm.dtype)
    if grad_h is not None:
        grad_h[rows] = dlogits @ table_mm
    if grad_t is not None and grad_t.dtype == table_mm.dtype:
        grad_t.addmm_(dlogits.t(), h)  # in place: no [V, d] temporary
    elif grad_t is not None:
        grad_t += (dlogits.t() @ h).to(grad_t.dtype)


def scaled_saved_gradients(ctx, grad_out: torch.Tensor, n_other: int) -> tuple:
    """A chunked cross-entropy's backward: the (hidden, table) gradients its forward saved,
    scaled by the incoming gradient, then None for its `n_other` other inputs."""
    grad_h, grad_t = ctx.saved_tensors
    return (None if grad_h is None else grad_h * grad_out,
            None if grad_t is None else grad_t * grad_out, *([None] * n_other))


def chunked_tied_cross_entropy_sum(hidden: torch.Tensor, table: torch.Tensor,
                                   masked_targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """`cross_entropy_sum(logits(hidden, table), masked_targets)` computed `chunk` positions at
    a time, never holding the [..., L, V] logits (memory-lean; same value and gradients within
    float rounding). hidden [..., L, d]; table [V, d] with row PAD_ITEM scored -inf;
    masked_targets [..., L]. Under torch.autocast the logits' matmuls run in its dtype and the
    softmax in fp32, as autocast runs the whole path."""
    if chunk < 1:
        raise ValueError(f"chunked cross-entropy: chunk must be >= 1, got {chunk}")
    dev = hidden.device.type
    mm_dtype = chunk_matmul_dtype(hidden, table)
    with torch.autocast(dev, enabled=False):
        return _ChunkedTiedCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), table,
                                              masked_targets.reshape(-1), chunk, mm_dtype)
