"""Engines: one per parallel scheme, behind the loop's `Engine` interface (see `base`)."""

from __future__ import annotations

import importlib

from recpar.train.engine_registry import ENGINES
from recpar.train.engines.base import Engine, EngineContext, StepResult


def build_engine(ctx: EngineContext) -> Engine:
    """The engine for ctx.spec.plan.scheme, applied to ctx.model on this rank."""
    scheme = ctx.spec.plan.scheme
    if scheme not in ENGINES:
        raise ValueError(f"scheme {scheme!r} has no training engine in this checkout "
                         f"(available: {', '.join(ENGINES)})")
    module, cls = ENGINES[scheme].split(":")
    return getattr(importlib.import_module(module), cls)(ctx)


__all__ = ["ENGINES", "Engine", "EngineContext", "StepResult", "build_engine"]
