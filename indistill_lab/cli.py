"""Command line: `python -m indistill_lab data` (make Fashion-MNIST available), `zoo build|evaluate|list`,
`reproduce` (every InDistill method and baseline over seeds -> results/<dataset>.csv, .md, .png).
Bad input is reported as one line `error: ...` with exit status 2; `--debug` shows the traceback."""
from __future__ import annotations

import argparse
import json
import sys

from . import zoo
from .errors import cli, guarded, positive, seeds_from
from .fashion_mnist import ensure_fashion_mnist
from .methods import method_names
from .train import OPTIMIZER_STATE_POLICIES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m indistill_lab", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("data", help="make Fashion-MNIST available offline (raw folder, Debian package or download)")
    zp = sub.add_parser("zoo", help="build or list the pretrained model zoo")
    zp.add_argument("action", choices=["build", "evaluate", "list"],
                    help="build: train and evaluate; evaluate: re-measure shipped models; list: print the manifest")
    zp.add_argument("--only", nargs="+", metavar="NAME", help=f"models to build (default all: {', '.join(zoo.RECIPES)})")
    zp.add_argument("--force", action="store_true", help="retrain models that are already built")
    zp.add_argument("--dataset", default="fashion-mnist")
    rp = sub.add_parser("reproduce", help="run InDistill and every baseline over seeds; write the results table "
                        "(results/<dataset>.csv/.md/.png for the default budget, <dataset>-<config digest>.* otherwise)")
    rp.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "cifar10"])
    rp.add_argument("--seeds", type=int, nargs="+", default=[3],
                    help="a count (3: seeds 0 1 2) or several seeds (0 3 7)")
    rp.add_argument("--update", action="store_true",
                    help="allow adding rows to a committed (git-tracked) table; without it such a run stops first")
    rp.add_argument("--out", metavar="DIR",
                    help="folder for the table (default: results/, results/quick/ in quick mode, or $INDISTILL_OUT)")
    rp.add_argument("--paper", action="store_true",
                    help="the paper's 70-epoch protocol (a=2, full passes, lr 1e-4 from epoch 60); CIFAR-10 always uses it")
    rp.add_argument("--epochs", type=int, help="total epochs per run (default: 15, or 70 with --paper)")
    rp.add_argument("--a", type=int, help="curriculum constant: layer k for a + k epochs (default 0, or 2 with --paper)")
    rp.add_argument("--epoch-size", type=int, help="examples per epoch, 0 = full pass (default 12000, or 0 with --paper)")
    rp.add_argument("--lr-drop-epoch", type=int, help="epoch from which lr is 1e-4 (default: epochs - 2, or 60)")
    rp.add_argument("--optimizer-state", choices=OPTIMIZER_STATE_POLICIES,
                    help="Adam's state at curriculum boundaries, for every method alike: kept for the run, cleared "
                         "at each phase change, or cleared each epoch (default: epoch, the reference code's protocol)")
    rp.add_argument("--methods", nargs="+", metavar="NAME",
                    help=f"subset of methods (default all: {', '.join(method_names())})")
    rp.add_argument("--workers", type=int, default=1,
                    help="worker processes of one thread each (rows are the same as a sequential run)")
    rp.add_argument("--ray", nargs="?", const="auto", metavar="ADDRESS",
                    help="one Ray task per (method, seed), 1 CPU or 1 GPU each (needs the 'cluster' extra): on the "
                         "cluster of `ray start` or $RAY_ADDRESS (default), at ADDRESS (e.g. ray://head:10001), or "
                         "'local' for an instance started here for this command")
    rp.add_argument("--no-cache", action="store_true", help="recompute teacher targets every batch")
    return guarded(lambda args: _run(parser.parse_args(args)), argv)


def _run(args: argparse.Namespace) -> int:
    """Carry out one parsed command."""
    if args.command == "data":
        print(f"Fashion-MNIST ready (source: {ensure_fashion_mnist()}).")
    elif args.command == "zoo":
        if args.action == "build":
            zoo.build(args.only, args.dataset, force=args.force)
        elif args.action == "evaluate":
            zoo.evaluate_zoo(args.only, args.dataset)
        print(json.dumps(zoo.models_for(args.dataset), indent=2))
    elif args.command == "reproduce":
        from .experiments.reproduce import reproduce
        from .experiments.tables import markdown_summary
        from .methods import check_names
        from .pipeline import RunConfig
        from .results import check_unique

        seeds = seeds_from(args.seeds)
        positive("--workers", args.workers)
        positive("--epochs", args.epochs)
        positive("--epoch-size", args.epoch_size, 0)
        positive("--lr-drop-epoch", args.lr_drop_epoch, 0)
        positive("--a", args.a, 0)
        if args.methods is not None:
            check_names(check_unique(args.methods, "--methods"))
        changes = {k: v for k, v in {"epochs": args.epochs, "a": args.a, "lr_drop_epoch": args.lr_drop_epoch,
                                     "optimizer_state": args.optimizer_state}.items() if v is not None}
        if args.epoch_size is not None:
            changes["epoch_size"] = args.epoch_size or None
        if args.no_cache:
            changes["cache"] = False
        if "epochs" in changes and "lr_drop_epoch" not in changes:
            changes["lr_drop_epoch"] = changes["epochs"] - (10 if args.paper else 2)
        if args.dataset == "cifar10":
            cfg = RunConfig.cifar10_paper(**changes)
        elif args.paper:
            cfg = RunConfig.paper(args.dataset, **changes)
        else:
            cfg = RunConfig(dataset=args.dataset, **changes)
        rows = reproduce(cfg, seeds, args.methods, args.out, workers=args.workers, ray_address=args.ray,
                         log=lambda m: print(m, flush=True), update=args.update)
        print(markdown_summary(rows))
    return 0


if __name__ == "__main__":
    cli(main)
