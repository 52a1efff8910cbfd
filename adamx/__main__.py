"""`python -m adamx demo`: train a Flax NNX classifier on synthetic two-spirals data with
`adamx.adam`, show progress and metrics (EMA weights too), and write a loss-curve PNG."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    main_parser = argparse.ArgumentParser(
        prog="python -m adamx",
        description="adamx: Keras 3's Adam as composable Optax transformations. Without a "
        "command, prints this help.",
        epilog="Example: python -m adamx demo --steps 500 --compare-keras",
    )
    commands = main_parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="train a small Flax model with adamx.adam (needs the demo extra: flax, matplotlib, "
        "keras)",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    demo.add_argument("--steps", type=positive_int, default=2000, help="training steps (>= 1)")
    demo.add_argument("--seed", type=int, default=0, help="random seed for data and weights")
    demo.add_argument(
        "--out", type=Path, default=Path("demo-out"), help="folder for the PNG and metrics"
    )
    demo.add_argument(
        "--compare-keras",
        action="store_true",
        help="also train with Keras's Adam (same weights and batches); exit 1 if the largest "
        "deviation exceeds the documented tolerance",
    )
    return main_parser


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command is None:  # bare `python -m adamx`: say what there is to run
        parser().print_help()
        return 0
    if args.out.exists() and not args.out.is_dir():
        parser().error(f"--out must be a folder, and {args.out} is a file")
    try:
        from adamx import _demo
    except ImportError as error:
        print(
            f'The demo needs the demo extra ({error.name} is missing): pip install "adamx[demo]"',
            file=sys.stderr,
        )
        return 2
    metrics = _demo.run(args.steps, args.seed, args.out, args.compare_keras)
    if args.compare_keras and metrics["keras_max_deviation"] > metrics["keras_tolerance"]:
        print("FAILED: adamx and Keras disagree beyond the tolerance", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
