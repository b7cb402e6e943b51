"""`recpar train` and `recpar eval popularity`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from recpar.parallel.plan import SCHEMES, ParallelPlan


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path, help="prepared dataset directory")
    p.add_argument("--out", required=True, type=Path, help="run output directory")
    p.add_argument("--run-id", help="defaults to one spelled out from the plan")
    p.add_argument("--model-size", default="tiny", help="named model size (tiny, small, ...)")
    p.add_argument("--model-override", action="append", default=[], metavar="KEY=VALUE",
                   help="override one ModelConfig field, e.g. n_layers=4 (repeatable)")
    p.add_argument("--train-config", type=Path,
                   help="YAML/JSON mapping of TrainConfig fields (see config/README.md)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="train_set",
                   help="override one TrainConfig field (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-text", action="store_true", help="ID embeddings only (no text fusion)")
    p.add_argument("--no-progress", action="store_true")


def register(sub) -> None:
    p = sub.add_parser("train", help="train one run and write its record")
    p.add_argument("--scheme", default="baseline", choices=SCHEMES)
    _add_common(p)
    p.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="non-learned references")
    evs = ev.add_subparsers(dest="eval_cmd", required=True)
    pop = evs.add_parser("popularity", help="most-popular ranking, same protocols as training")
    _add_common(pop)
    pop.set_defaults(func=cmd_popularity)


def _parse_kv(items: list[str], what: str) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"{what} {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)  # numbers/bools/lists parse as YAML scalars
    return out


def _spec(args, scheme: str):
    from recpar.model.config import ModelConfig
    from recpar.train.config import TrainConfig
    from recpar.train.loop import RunSpec
    from recpar.train.run_id import make_run_id

    train_values = {}
    if args.train_config:
        if not args.train_config.is_file():
            raise FileNotFoundError(f"{args.train_config}: train config not found")
        loaded = yaml.safe_load(args.train_config.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{args.train_config}: expected a mapping of TrainConfig fields")
        train_values.update(loaded)
    train_values.update(_parse_kv(args.train_set, "--set"))
    train = TrainConfig.from_mapping(train_values)
    model = ModelConfig.named(args.model_size, **_parse_kv(args.model_override,
                                                           "--model-override"))
    plan = ParallelPlan(scheme=scheme)
    run_id = args.run_id or make_run_id(plan, args.model_size)
    return RunSpec(data_dir=args.data, out_dir=args.out, run_id=run_id, model=model, train=train,
                   plan=plan, seed=args.seed, use_text=not args.no_text)


def cmd_train(args) -> int:
    if args.scheme != "baseline":
        raise ValueError(f"scheme {args.scheme!r} is not implemented yet in this checkout "
                         "(only 'baseline' is)")
    from recpar.train.loop import train_baseline

    rec = train_baseline(_spec(args, args.scheme), progress=not args.no_progress)
    print(json.dumps({"run_id": rec["run_id"], "metrics": rec["metrics"],
                      "test": rec["quality"]["test"]}, indent=1))
    return 0


def cmd_popularity(args) -> int:
    from recpar.train.loop import run_most_popular

    spec = _spec(args, "baseline")
    spec.run_id = args.run_id or "most-popular"
    rec = run_most_popular(spec)
    print(json.dumps({"run_id": rec["run_id"], "test": rec["quality"]["test"]}, indent=1))
    return 0
