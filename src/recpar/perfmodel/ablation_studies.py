"""The four CLI-driven ablations as pipeline steps (workflow/rules/ablations.smk): the files each
`recpar perfmodel <study>-ablation` publishes, and the config's `ablation_options` rendered as
that command's flags.

Each study writes `<stem>.{json,csv,md,png}` into its own directory under
`paper_tables/ablations/` (recpar.perfmodel.ablation_files.write_ablation_files); its runs'
records stay in the command's `--work-dir` (`results/ablations/<study>/`), which is not an
output: the published files are. Every study needs root (network namespaces and tc, or cgroup
CPU budgets; allreduce also vde2); the commands stop before measuring anything without it.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

ABLATIONS_DIR = "paper_tables/ablations"
EXTENSIONS = ("json", "csv", "md", "png")
"""What write_ablation_files writes, in its order."""

STUDIES = {
    "allreduce": "allreduce_latency",
    "compression": "compression_link_rate",
    "pipeline": "pipeline_bubble",
    "straggler": "straggler_sync_async",
}
"""Study (`ablation_studies` in the config) -> the stem of the files its command writes."""

SCALE_MODEL_DEFAULTS = {"hardware": "paper-a100", "cpu_budget": 0.2}
"""The compression ablation's scale model as README's command measures it."""
DEFAULT_MODEL_SIZE = "tiny"
"""`recpar perfmodel compression-ablation --model-size` default."""


def _check(study: str) -> str:
    if study not in STUDIES:
        raise ValueError(f"ablation study {study!r}: not one of {', '.join(STUDIES)}")
    return STUDIES[study]


def outputs(study: str, ablations_dir: str = ABLATIONS_DIR) -> list[str]:
    """The files `study` publishes: `<dir>/<study>/<stem>.<ext>` for json, csv, md, png."""
    stem = _check(study)
    return [f"{ablations_dir}/{study}/{stem}.{ext}" for ext in EXTENSIONS]


def result_json(study: str, ablations_dir: str = ABLATIONS_DIR) -> str:
    """The whole result of `study` (what `recpar report ablation-claims` and the quality
    ablation read)."""
    return outputs(study, ablations_dir)[0]


def _value(key: str, value: Any) -> str:
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"ablation option {key}: an empty list")
        return ",".join(_value(key, v) for v in value)
    if isinstance(value, bool) or value is None or isinstance(value, Mapping):
        raise ValueError(f"ablation option {key}: {value!r} is not a number, string or list")
    return str(value)


def cli_flags(options: Mapping[str, Any] | None) -> str:
    """`{"max_epochs": 20, "schemes": ["sync", "async-dynamic"]}` ->
    `--max-epochs 20 --schemes sync,async-dynamic`: keys in the order given, `_` spelled `-`,
    lists joined by commas (as the commands take them), every value shell-quoted."""
    return " ".join(f"--{k.replace('_', '-')} {shlex.quote(_value(k, v))}"
                    for k, v in (options or {}).items())


def scale_model_options(ablation_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The compression ablation's `recpar perfmodel scale-model` options: `scale_model` over
    SCALE_MODEL_DEFAULTS, and the compression ablation's own model size, so the device measured
    is the one its runs train."""
    opts = ablation_options or {}
    out = {**SCALE_MODEL_DEFAULTS, **(opts.get("scale_model") or {})}
    out["model_size"] = (opts.get("compression") or {}).get("model_size", DEFAULT_MODEL_SIZE)
    return out
