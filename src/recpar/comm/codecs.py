"""Wire formats of recpar's own compressors: 1-bit sign (Formula 10) and top-k (Formula 11).

Pure tensor functions (no process groups), so round trips are unit-testable on one process.

sign: payload = ceil(n/8) uint8 bytes of packed sign bits (most significant bit first, the
  numpy.packbits order; bit 1 = non-negative, so sign(0) = +1 as in the paper) followed by the
  4 bytes of one float32 scale ||p||_1 / n. Decoded value: scale * (+1 | -1).
  Written by hand because torch has no packbits, and numpy.packbits would force a device->host
  copy of every GPU bucket.
topk: payload = int32 tensor of length 2k: the k float32 values bit-cast to int32, then the k
  int32 indices. One tensor so one all-gather carries both.
Both payloads are byte-exact on hosts of the same endianness (a homogeneous cluster).
"""

from __future__ import annotations

import torch

from recpar.comm.byte_formulas import SIGN_SCALE_BYTES, topk_k

# Bit weights MSB-first: bit j of a byte holds element 8*b + j.
_SHIFTS = torch.tensor([7, 6, 5, 4, 3, 2, 1, 0], dtype=torch.uint8)
_INT32_MAX = 2**31 - 1


def sign_of(p: torch.Tensor) -> torch.Tensor:
    """+1 where p >= 0 (including 0, Formula 10), -1 elsewhere; same dtype as p."""
    return torch.where(p >= 0, torch.ones((), dtype=p.dtype, device=p.device),
                       -torch.ones((), dtype=p.dtype, device=p.device))


def l1_scale(p: torch.Tensor) -> torch.Tensor:
    """||p||_1 / n as a float32 0-d tensor (0 for an empty tensor)."""
    if p.numel() == 0:
        return torch.zeros((), dtype=torch.float32, device=p.device)
    return p.detach().float().abs().sum() / p.numel()


def pack_signs(p: torch.Tensor) -> torch.Tensor:
    """(n,) float -> (ceil(n/8),) uint8 with bit 1 for p >= 0."""
    n = p.numel()
    bits = (p.reshape(-1) >= 0).to(torch.uint8)
    pad = (-n) % 8
    if pad:
        bits = torch.cat([bits, bits.new_zeros(pad)])
    shifts = _SHIFTS.to(bits.device)
    # (ceil(n/8), 8) bits -> one byte each; max 255 so uint8 accumulation is exact.
    return (bits.view(-1, 8) << shifts).sum(dim=1, dtype=torch.uint8)


def unpack_signs(packed: torch.Tensor, numel: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(..., ceil(n/8)) uint8 -> (..., n) of +1/-1 in `dtype`."""
    shifts = _SHIFTS.to(packed.device)
    bits = (packed.unsqueeze(-1) >> shifts) & 1  # (..., m, 8)
    bits = bits.flatten(-2)[..., :numel]
    return bits.to(dtype) * 2 - 1


def sign_encode(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Compress p (n,) to (payload uint8 (ceil(n/8)+4,), g_hat (n,) the local decoded value)."""
    scale = l1_scale(p)
    packed = pack_signs(p)
    payload = torch.cat([packed, scale.reshape(1).to(torch.float32).view(torch.uint8)])
    g_hat = scale.to(p.dtype) * sign_of(p)
    return payload, g_hat


def sign_decode_mean(gathered: torch.Tensor, numel: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(W, ceil(n/8)+4) uint8 payloads of W ranks -> (n,) mean of their decoded gradients."""
    world = gathered.shape[0]
    packed = gathered[:, :-SIGN_SCALE_BYTES]
    scales = gathered[:, -SIGN_SCALE_BYTES:].reshape(-1).clone().view(torch.float32).view(world, 1)
    signs = unpack_signs(packed, numel, torch.float32)  # (W, n)
    return ((scales * signs).sum(dim=0) / world).to(dtype)


def topk_encode(p: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Compress p (n,) to (payload int32 (2k,), g_hat (n,) dense local decoded value).

    k = ceil(ratio * n) largest |p| (torch.topk; ties broken by torch's order).
    """
    n = p.numel()
    if n > _INT32_MAX:
        raise ValueError(f"topk: bucket of {n} elements does not fit int32 indices; lower bucket_size")
    k = topk_k(n, ratio)
    flat = p.reshape(-1)
    idx = torch.topk(flat.abs(), k, sorted=False).indices  # (k,) int64
    values = flat[idx].to(torch.float32)
    payload = torch.cat([values.view(torch.int32), idx.to(torch.int32)])
    g_hat = torch.zeros_like(flat)
    g_hat[idx] = flat[idx]
    return payload, g_hat


def topk_decode_mean(gathered: torch.Tensor, numel: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(W, 2k) int32 payloads -> (n,) mean of the W sparse gradients (scatter-add, then / W)."""
    world, two_k = gathered.shape
    k = two_k // 2
    values = gathered[:, :k].reshape(-1).clone().view(torch.float32)  # (W*k,)
    indices = gathered[:, k:].reshape(-1).to(torch.int64)  # (W*k,)
    dense = torch.zeros(numel, dtype=torch.float32, device=gathered.device)
    dense.index_add_(0, indices, values)
    return (dense / world).to(dtype)
