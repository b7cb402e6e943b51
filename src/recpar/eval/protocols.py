"""Evaluation examples and the two ranking protocols, `full` and `sampled100`.

Examples. Every interaction of the evaluated split (valid or test) is one example: its item is
the target, and the history is ALL earlier interactions of the same user in the global
chronological order (train, valid, and earlier rows of the split itself), of which the model
reads the last max_seq_len, left-padded with 0. An interaction without any earlier
interaction of its user cannot be predicted from history: it is skipped and counted
(`n_skipped_no_history`).

Protocols. The score function maps histories [B, L] to scores [B, n_items + 1]; the target's
0-based rank among the candidates gives HR@K and NDCG@K (`recpar.eval.metrics`).
- `full`: candidates are all items 1..n_items except those in the user's earlier history
  (the whole history, not only the last max_seq_len). The target itself is always a
  candidate, even when the user had interacted with it before (a repeat interaction).
- `sampled100`: the target plus 100 negatives drawn uniformly without replacement from the
  items the user NEVER interacted with anywhere in the dataset, with a torch.Generator seeded
  by `seed`; the draws do not depend on the batch size.
Ties: a candidate with exactly the target's score ranks above the target iff its item id is
lower (deterministic tie-break by item id, lower id first). A constant scorer therefore ranks
the target by its id among the candidates, never optimistically first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from recpar.constants import PAD_ITEM
from recpar.eval.metrics import hits, ndcg_gains

PROTOCOLS = ("full", "sampled100")
EVAL_SPLITS = ("valid", "test")
N_SAMPLED_NEGATIVES = 100  # the "100" of sampled100
_NEG_CHUNK = 4096  # examples per negative-sampling draw; fixed so results ignore batch_size

ScoreFn = Callable[[torch.Tensor], torch.Tensor]  # [B, L] int64 -> [B, n_items + 1] float


@dataclass
class EvalExamples:
    """Evaluation examples of one split, plus each user's full interaction list."""

    split: str
    """valid or test."""
    histories: torch.Tensor
    """[M, max_seq_len] int64: the last max_seq_len earlier items, left-padded with 0."""
    targets: torch.Tensor
    """[M] int64 held-out item ids (1..n_items)."""
    users: torch.Tensor
    """[M] int64 user ids, examples in global chronological order."""
    n_prior: torch.Tensor
    """[M] int64 number of earlier interactions of the user (>= 1): the first n_prior
    entries of the user's list in `user_items` are the user's earlier history."""
    user_ptr: torch.Tensor
    """[n_users + 1] int64 CSR offsets into user_items."""
    user_items: torch.Tensor
    """[n_interactions] int64 every interaction's item, grouped by user, chronological."""
    n_items: int
    """Real items; scores have n_items + 1 columns (column 0 = padding)."""
    n_skipped_no_history: int
    """Interactions of the split whose user had no earlier interaction."""
    _negatives: dict = field(default_factory=dict, repr=False)
    """Cache: (seed, n_neg) -> [M, n_neg] sampled negatives."""

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    @property
    def max_seq_len(self) -> int:
        return int(self.histories.shape[1])


def build_eval_examples(ds, split: str, max_seq_len: int) -> EvalExamples:
    """Examples of split `valid` or `test` of a `recpar.data.prepared.PreparedDataset`."""
    if split not in EVAL_SPLITS:
        raise ValueError(f"build_eval_examples: split {split!r} must be one of "
                         f"{', '.join(EVAL_SPLITS)}")
    if max_seq_len < 1:
        raise ValueError(f"build_eval_examples: max_seq_len={max_seq_len} must be >= 1")
    frames = [ds.train, ds.valid, ds.test]
    users = np.concatenate([f["user"].to_numpy(np.int64) for f in frames])
    items = np.concatenate([f["item"].to_numpy(np.int64) for f in frames])
    order = np.concatenate([f["order"].to_numpy(np.int64) for f in frames])
    in_split = np.concatenate([np.full(len(f), name == split)
                               for f, name in zip(frames, ("train", "valid", "test"))])
    n_users, n_items = int(ds.n_users), int(ds.n_items)
    if len(users) and (users.min() < 0 or users.max() >= n_users):
        raise ValueError(f"{ds.root}: user ids must lie in 0..{n_users - 1}, "
                         f"found {users.min()}..{users.max()}")
    if len(items) and (items.min() < 1 or items.max() > n_items):
        raise ValueError(f"{ds.root}: item ids must lie in 1..{n_items}, "
                         f"found {items.min()}..{items.max()}")

    # Group by user, chronological within a user: the CSR list of all interactions.
    perm = np.lexsort((order, users))
    users_s, items_s, order_s, split_s = users[perm], items[perm], order[perm], in_split[perm]
    counts = np.bincount(users_s, minlength=n_users)
    ptr = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)  # [n_users + 1]
    prior = np.arange(len(users_s)) - ptr[users_s]  # earlier interactions of the same user

    sel = np.flatnonzero(split_s)
    n_skipped = int((prior[sel] == 0).sum())
    sel = sel[prior[sel] > 0]
    sel = sel[np.argsort(order_s[sel], kind="stable")]  # examples in global order
    ex_users, ex_prior = users_s[sel], prior[sel]

    # histories[m, j] = item at user position prior - L + j, or padding before the user's start
    l = max_seq_len
    pos = ex_prior[:, None] - l + np.arange(l)[None, :]  # [M, L]
    hist = np.where(pos >= 0, items_s[ptr[ex_users][:, None] + np.maximum(pos, 0)], PAD_ITEM)
    return EvalExamples(
        split=split,
        histories=torch.from_numpy(np.ascontiguousarray(hist, dtype=np.int64)),
        targets=torch.from_numpy(items_s[sel].copy()),
        users=torch.from_numpy(ex_users.copy()),
        n_prior=torch.from_numpy(ex_prior.astype(np.int64)),
        user_ptr=torch.from_numpy(ptr),
        user_items=torch.from_numpy(items_s.copy()),
        n_items=n_items,
        n_skipped_no_history=n_skipped,
    )


def _csr_rows(starts: torch.Tensor, lengths: torch.Tensor,
              values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row r owns values[starts[r] : starts[r] + lengths[r]]; returns (row index, value) of
    every owned element, flattened ([sum lengths] each)."""
    rows = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    offsets = torch.arange(int(lengths.sum())) - torch.repeat_interleave(
        lengths.cumsum(0) - lengths, lengths)
    return rows, values[starts[rows] + offsets]


def sample_negatives(ex: EvalExamples, seed: int,
                     n_neg: int = N_SAMPLED_NEGATIVES) -> torch.Tensor:
    """[M, n_neg] int64 distinct items per example, uniform among the user's never-seen items.

    Rejection sampling against a sorted (user, item) key array, vectorised per chunk of
    _NEG_CHUNK examples: draw 2 n_neg candidates with replacement, drop the user's items and
    repeats, keep the first n_neg left (= sampling without replacement). The rare row that
    keeps fewer is redrawn exactly: random keys over all items, the n_neg smallest allowed.
    """
    key = (seed, n_neg)
    if key in ex._negatives:
        return ex._negatives[key]
    n1 = ex.n_items + 1
    m = len(ex)
    user_counts = ex.user_ptr[1:] - ex.user_ptr[:-1]  # [n_users]
    seen_users = torch.repeat_interleave(torch.arange(len(user_counts)), user_counts)
    seen_keys = torch.unique(seen_users * n1 + ex.user_items)  # sorted, [n_pairs]
    distinct_seen = torch.bincount(seen_keys // n1, minlength=len(user_counts))  # per user
    if m:
        free = ex.n_items - distinct_seen[ex.users]
        worst = int(free.argmin())
        if int(free[worst]) < n_neg:
            raise ValueError(
                f"sampled negatives: user {int(ex.users[worst])} has only {int(free[worst])} "
                f"items never interacted with, fewer than the {n_neg} negatives needed "
                f"(n_items={ex.n_items})")

    def is_seen(users: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        k = users[:, None] * n1 + cand  # [C, K]
        i = torch.searchsorted(seen_keys, k).clamp(max=len(seen_keys) - 1)
        return seen_keys[i] == k

    gen = torch.Generator().manual_seed(int(seed))
    out = torch.empty((m, n_neg), dtype=torch.int64)
    for c0 in range(0, m, _NEG_CHUNK):
        users = ex.users[c0:c0 + _NEG_CHUNK]  # [C]
        cand = torch.randint(1, n1, (len(users), 2 * n_neg), generator=gen)  # [C, 2 n_neg]
        ok = ~is_seen(users, cand)
        # Repeats: after a stable sort by value, an entry equal to its left neighbour is a
        # later draw of the same item.
        vals, order = torch.sort(cand, dim=1, stable=True)
        rep_sorted = torch.zeros_like(ok)
        rep_sorted[:, 1:] = vals[:, 1:] == vals[:, :-1]
        rep = torch.zeros_like(ok).scatter_(1, order, rep_sorted)
        ok &= ~rep
        take = ok & (ok.cumsum(1) <= n_neg)
        full = take.sum(1) == n_neg  # [C]
        chunk = torch.empty((len(users), n_neg), dtype=torch.int64)
        chunk[full] = cand[full][take[full]].view(-1, n_neg)
        short = torch.nonzero(~full).flatten()
        if len(short):
            keys = torch.rand((len(short), n1), generator=gen)  # [S, n_items + 1]
            keys[:, PAD_ITEM] = 2.0  # never chosen: rand < 1
            su = users[short]
            rows, seen_items = _csr_rows(ex.user_ptr[su], user_counts[su], ex.user_items)
            keys[rows, seen_items] = 2.0
            chunk[short] = torch.topk(keys, n_neg, dim=1, largest=False).indices
        out[c0:c0 + _NEG_CHUNK] = chunk
    ex._negatives[key] = out
    return out


def _ranks_full(scores: torch.Tensor, targets: torch.Tensor, ex: EvalExamples,
                sl: slice) -> torch.Tensor:
    """[B, n_items + 1] scores -> [B] 0-based ranks against all unseen items."""
    b, n1 = scores.shape
    dev = scores.device
    cand = torch.ones((b, n1), dtype=torch.bool, device=dev)  # [B, n_items + 1]
    cand[:, PAD_ITEM] = False
    rows, seen = _csr_rows(ex.user_ptr[ex.users[sl]], ex.n_prior[sl],
                           ex.user_items)  # every item of the user's earlier history
    cand[rows.to(dev), seen.to(dev)] = False
    cand[torch.arange(b, device=dev), targets] = True  # the target is always a candidate
    st = scores.gather(1, targets[:, None])  # [B, 1]
    ids = torch.arange(n1, device=dev)[None, :]
    above = (scores > st) | ((scores == st) & (ids < targets[:, None]))
    return (above & cand).sum(1)


def _ranks_sampled(scores: torch.Tensor, targets: torch.Tensor,
                   negatives: torch.Tensor) -> torch.Tensor:
    """Ranks of the targets among target + negatives ([B, n_neg] item ids)."""
    st = scores.gather(1, targets[:, None])  # [B, 1]
    sn = scores.gather(1, negatives)  # [B, n_neg]
    above = (sn > st) | ((sn == st) & (negatives < targets[:, None]))
    return above.sum(1)


def evaluate(score_fn: ScoreFn, examples: EvalExamples, protocol: str, k: int = 10,
             batch_size: int = 256, seed: int = 0,
             device: torch.device | str | None = None) -> dict:
    """HR@k and NDCG@k of `score_fn` on `examples` under `protocol` (full or sampled100).

    Histories go to `device` (default: left where they are, CPU) in batches of batch_size;
    memory is O(batch_size x n_items). Run under torch.no_grad() with the model in eval mode.
    Returns {hr_at_<k>, ndcg_at_<k>, n_examples, n_skipped_no_history, protocol, split, k}.
    """
    return evaluate_protocols(score_fn, examples, (protocol,), k=k, batch_size=batch_size,
                              seed=seed, device=device)[protocol]


def evaluate_protocols(score_fn: ScoreFn, examples: EvalExamples, protocols=PROTOCOLS,
                       k: int = 10, batch_size: int = 256, seed: int = 0,
                       device: torch.device | str | None = None) -> dict[str, dict]:
    """`evaluate` under several protocols at once: {protocol: result}. Each batch is scored
    once and ranked under every protocol, so the model's forward pass (the cost of an
    evaluation) is paid once, not once per protocol; the results equal separate calls."""
    protocols = tuple(protocols)
    for protocol in protocols:
        if protocol not in PROTOCOLS:
            raise ValueError(f"evaluate: unknown protocol {protocol!r}; "
                             f"choose one of {', '.join(PROTOCOLS)}")
    if batch_size < 1:
        raise ValueError(f"evaluate: batch_size={batch_size} must be >= 1")
    m = len(examples)
    if m == 0:
        raise ValueError(f"evaluate: split {examples.split!r} has no example with history "
                         f"({examples.n_skipped_no_history} skipped)")
    negatives = sample_negatives(examples, seed) if "sampled100" in protocols else None
    hit_sum = dict.fromkeys(protocols, 0.0)
    ndcg_sum = dict.fromkeys(protocols, 0.0)
    for b0 in range(0, m, batch_size):
        sl = slice(b0, b0 + batch_size)
        hist = examples.histories[sl]
        if device is not None:
            hist = hist.to(device)
        scores = score_fn(hist)
        if scores.shape != (hist.shape[0], examples.n_items + 1):
            raise ValueError(f"evaluate: score_fn returned shape {tuple(scores.shape)}, "
                             f"expected ({hist.shape[0]}, n_items + 1 = "
                             f"{examples.n_items + 1})")
        if torch.isnan(scores).any():
            raise ValueError(f"evaluate: score_fn returned NaN scores (batch at example {b0})")
        scores = scores.detach()
        targets = examples.targets[sl].to(scores.device)
        for protocol in protocols:
            if protocol == "full":
                ranks = _ranks_full(scores, targets, examples, sl)
            else:
                ranks = _ranks_sampled(scores, targets, negatives[sl].to(scores.device))
            ranks = ranks.cpu()
            hit_sum[protocol] += float(hits(ranks, k).sum())
            ndcg_sum[protocol] += float(ndcg_gains(ranks, k).sum())
    return {protocol: {
        f"hr_at_{k}": hit_sum[protocol] / m,
        f"ndcg_at_{k}": ndcg_sum[protocol] / m,
        "n_examples": m,
        "n_skipped_no_history": examples.n_skipped_no_history,
        "protocol": protocol,
        "split": examples.split,
        "k": k,
    } for protocol in protocols}
