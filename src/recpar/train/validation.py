"""Rank 0's evaluation inside a run: the valid/test examples, the single-device copy of the
model that scores them, and the two protocols (`full`, `sampled100`) at HR@10 / NDCG@10.

Evaluation lies outside the timing window; the other ranks wait for rank 0 meanwhile.
"""

from __future__ import annotations

import contextlib
import os

import torch

from recpar.data.prepared import PreparedDataset
from recpar.eval.protocols import build_eval_examples, evaluate_protocols, sample_negatives
from recpar.model.config import ModelConfig
from recpar.model.recommender import Recommender
from recpar.train.config import EVAL_PROTOCOLS


def eval_examples(ds: PreparedDataset, max_seq_len: int, seed: int) -> dict:
    """{"valid": examples, "test": examples}, their sampled100 negatives drawn."""
    examples = {s: build_eval_examples(ds, s, max_seq_len) for s in ("valid", "test")}
    for ex in examples.values():
        # Draw (and cache) the sampled100 negatives now: a dataset too small for the
        # protocol fails here, before any training, not after it.
        sample_negatives(ex, seed)
    return examples


def quality(score_fn, examples: dict, seed: int, batch_size: int) -> dict:
    """{split: {protocol: result}} for every split of `examples` under both protocols."""
    return {split: evaluate_protocols(score_fn, ex, EVAL_PROTOCOLS, k=10, batch_size=batch_size,
                                      seed=seed)
            for split, ex in examples.items()}


@contextlib.contextmanager
def eval_threads(world: int):
    """Rank 0 evaluates alone: the other ranks wait for it (in a collective, or have exited),
    so it may use every core this process may run on instead of its 1/world share. Evaluation
    lies outside the timing window; only its wall time changes."""
    if world == 1:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(max(old, len(os.sched_getaffinity(0))))
    try:
        yield
    finally:
        torch.set_num_threads(old)


class EvalCopy:
    """What rank 0 scores: a plain single-device model filled from the engine's full weights
    (whatever the plan), so every scheme is evaluated by the same code."""

    def __init__(self, model_cfg: ModelConfig, n_items: int, text_emb: torch.Tensor | None,
                 device: torch.device, world: int):
        # Its random init is overwritten; fork_rng keeps it from advancing the training stream.
        with torch.random.fork_rng(devices=[]):
            self.model = Recommender(model_cfg, n_items, text_emb).to(device)
        self.device = device
        self.world = world

    def score(self, hist: torch.Tensor) -> torch.Tensor:
        return self.model.score_last(hist.to(self.device))

    def load(self, state: dict[str, torch.Tensor]) -> None:
        """Take the single-device weights (`Engine.full_state_dict`, or a checkpoint's)."""
        self.model.load_state_dict(state)

    def validate(self, examples: dict, metric: str, batch_size: int, seed: int) -> float:
        """`metric` (e.g. ndcg_at_10) on the valid split, full ranking."""
        self.model.eval()
        with torch.no_grad(), eval_threads(self.world):
            v = evaluate_protocols(self.score, examples["valid"], ("full",), k=10,
                                   batch_size=batch_size, seed=seed)["full"]
        return v[metric]

    def quality(self, examples: dict, seed: int, batch_size: int) -> dict:
        """Valid and test under both protocols (`quality`)."""
        self.model.eval()
        with torch.no_grad(), eval_threads(self.world):
            return quality(self.score, examples, seed, batch_size)

    def params_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())
