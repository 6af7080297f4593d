"""Command line: `python -m indistill_lab data` (make Fashion-MNIST available), `zoo build|evaluate|list`."""
from __future__ import annotations

import argparse
import json
import sys

from . import zoo
from .data import ensure_fashion_mnist


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m indistill_lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("data", help="make Fashion-MNIST available offline (raw folder, Debian package or download)")
    zp = sub.add_parser("zoo", help="build or list the pretrained model zoo")
    zp.add_argument("action", choices=["build", "evaluate", "list"],
                    help="build: train and evaluate; evaluate: re-measure shipped models; list: print the manifest")
    zp.add_argument("--only", nargs="+", metavar="NAME", help=f"models to build (default all: {', '.join(zoo.RECIPES)})")
    zp.add_argument("--force", action="store_true", help="retrain models that are already built")
    zp.add_argument("--dataset", default="fashion-mnist")
    args = parser.parse_args(argv)
    if args.command == "data":
        print(f"Fashion-MNIST ready (source: {ensure_fashion_mnist()}).")
    elif args.command == "zoo":
        if args.action == "build":
            zoo.build(args.only, args.dataset, force=args.force)
        elif args.action == "evaluate":
            zoo.evaluate_zoo(args.only, args.dataset)
        print(json.dumps(zoo.read_manifest()["models"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
