"""Error-feedback residuals (paper Formula 11), kept per DDP bucket index.

A residual is a flat tensor the length of its bucket. DDP rebuilds its buckets once, after the
first iteration, in the order gradients became ready; a bucket index can then cover other
parameters. Each stored residual therefore remembers its *layout* (which parameters, in which
order, how many elements each); when a bucket arrives with a different layout the residuals are
split per parameter and re-assembled for the new buckets, so no error is lost or misapplied.

Parameters are identified by name when the hook state was given `named_parameters` (then a
checkpoint restores correctly into any bucket layout), otherwise by object identity within the
process (then a checkpoint can only be restored into the same bucket layout; a mismatch is an
error, never a silent misapplication).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable, Iterable, Mapping, Sequence

import torch


@dataclass(frozen=True)
class BucketLayout:
    """Which parameters a flat bucket holds, in order."""

    keys: tuple[Hashable, ...]
    """Per-parameter key: the parameter name if known, else ('id', id(param)), else ('flat', i)."""
    numels: tuple[int, ...]
    """Elements of each parameter's gradient inside the bucket (same order as keys)."""
    shapes: tuple[tuple[int, ...], ...]
    """Gradient shape of each parameter (kept so checkpoints can be checked on load)."""

    @property
    def numel(self) -> int:
        """Total elements in the bucket."""
        return sum(self.numels)


def bucket_layout(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
                  names: Mapping[int, str] | None) -> BucketLayout:
    """Layout from a bucket's parameters and gradient views (DDP keeps both in the same order)."""
    keys: list[Hashable] = []
    for i, g in enumerate(grads):
        if i < len(params):
            pid = id(params[i])
            keys.append(names[pid] if names and pid in names else ("id", pid))
        else:
            keys.append(("flat", i))
    return BucketLayout(tuple(keys), tuple(int(g.numel()) for g in grads),
                        tuple(tuple(int(s) for s in g.shape) for g in grads))


class ResidualStore:
    """bucket index -> (layout, flat residual)."""

    def __init__(self) -> None:
        self._by_bucket: dict[int, tuple[BucketLayout, torch.Tensor]] = {}
        self._by_param: dict[Hashable, torch.Tensor] = {}  # pieces waiting for a new layout
        # Per-bucket checkpoint entries not yet matched to a live bucket: index -> shapes, flat.
        self._loaded_layouts: dict[int, list[list[int]]] = {}
        self._loaded_flat: dict[int, torch.Tensor] = {}

    def get(self, index: int, layout: BucketLayout, like: torch.Tensor) -> torch.Tensor:
        """The residual for bucket `index` (zeros the first time), shaped like `like` (flat)."""
        self._adopt_loaded(index, layout, like)
        entry = self._by_bucket.get(index)
        if entry is not None and entry[0] == layout:
            return entry[1]
        if entry is not None:
            self._explode_all()
        if index in self._loaded_layouts:
            raise ValueError(
                f"error-feedback residual for bucket {index}: checkpoint layout "
                f"{self._loaded_layouts[index]} != current {list(map(list, layout.shapes))}; "
                "build the hook state with named_parameters to restore across bucket layouts")
        pieces = []
        for key, n in zip(layout.keys, layout.numels):
            piece = self._by_param.pop(key, None)
            if piece is not None and piece.numel() != n:
                raise ValueError(f"error-feedback residual for parameter {key!r}: "
                                 f"{piece.numel()} elements stored, bucket has {n}")
            pieces.append(piece.to(like.device, like.dtype) if piece is not None
                          else torch.zeros(n, device=like.device, dtype=like.dtype))
        residual = torch.cat(pieces) if pieces else torch.zeros(0, device=like.device, dtype=like.dtype)
        self._by_bucket[index] = (layout, residual)
        return residual

    def put(self, index: int, layout: BucketLayout, residual: torch.Tensor) -> None:
        """Store the new residual of bucket `index`."""
        self._by_bucket[index] = (layout, residual)

    def _explode_all(self) -> None:
        """Split every stored residual into per-parameter pieces (a bucket layout changed).

        Everything is split, not only the mismatched bucket: after DDP's rebuild a parameter's
        residual may sit in any old bucket. Buckets whose layout did not change are simply
        re-assembled from their own pieces on their next use.
        """
        for idx, (old_layout, flat) in list(self._by_bucket.items()):
            offset = 0
            for key, n in zip(old_layout.keys, old_layout.numels):
                if isinstance(key, tuple) and key[0] == "flat":
                    raise ValueError(
                        f"error-feedback residual for bucket {idx}: bucket layout changed and the "
                        "bucket carries no parameter identities to remap by")
                self._by_param[key] = flat[offset:offset + n]
                offset += n
            del self._by_bucket[idx]

    def clear(self) -> None:
        """Drop all residuals (e.g. between benchmark message sizes)."""
        self._by_bucket.clear()
        self._by_param.clear()
        self._loaded_layouts.clear()
        self._loaded_flat.clear()

    def __len__(self) -> int:
        return len(self._by_bucket) + len(self._by_param)

    def items(self) -> Iterable[tuple[int, torch.Tensor]]:
        """(bucket index, residual) pairs currently held per bucket."""
        return ((i, r) for i, (_, r) in self._by_bucket.items())

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable residuals: per parameter name where names are known, else per bucket."""
        per_param: dict[str, torch.Tensor] = {}
        per_bucket: dict[int, torch.Tensor] = {}
        layouts: dict[int, list[list[int]]] = {}
        for idx, (layout, flat) in self._by_bucket.items():
            if all(isinstance(k, str) for k in layout.keys):
                offset = 0
                for key, n in zip(layout.keys, layout.numels):
                    per_param[key] = flat[offset:offset + n].detach().clone().cpu()
                    offset += n
            else:
                per_bucket[idx] = flat.detach().clone().cpu()
                layouts[idx] = [list(s) for s in layout.shapes]
        for key, piece in self._by_param.items():
            if not isinstance(key, str):
                raise ValueError("error-feedback residuals are pending a bucket rebuild without "
                                 "parameter names; checkpoint after the next iteration")
            per_param[key] = piece.detach().clone().cpu()
        return {"per_param": per_param, "per_bucket": per_bucket, "per_bucket_shapes": layouts}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from `state_dict()`; tensors move to the gradient device on first use."""
        for key in ("per_param", "per_bucket", "per_bucket_shapes"):
            if key not in state:
                raise ValueError(f"residual state: missing key {key!r}")
        self._by_bucket.clear()
        self._by_param = {k: v.clone() for k, v in state["per_param"].items()}
        self._loaded_layouts = {int(i): [list(x) for x in s]
                                for i, s in state["per_bucket_shapes"].items()}
        self._loaded_flat = {int(i): flat.clone() for i, flat in state["per_bucket"].items()}
        missing = set(self._loaded_flat) ^ set(self._loaded_layouts)
        if missing:
            raise ValueError(f"residual state: buckets {sorted(missing)} lack a residual or its shapes")

    def _adopt_loaded(self, index: int, layout: BucketLayout, like: torch.Tensor) -> None:
        """Attach a per-bucket checkpoint residual to the live bucket if its shapes match."""
        if index in self._loaded_layouts \
                and [list(s) for s in layout.shapes] == self._loaded_layouts[index]:
            flat = self._loaded_flat.pop(index)
            del self._loaded_layouts[index]
            self._by_bucket[index] = (layout, flat.to(like.device, like.dtype))
