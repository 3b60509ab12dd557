"""`python -m bbsd.study.toyshow OUT --seed 1 --photos 50`: render a toy show into OUT and print its manifest.

Invariant: the command adds nothing to `render_show`: same arguments, same bytes; a bad argument
prints the error's one line and exits 2, as bbsd's own commands do.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bbsd import logs
from bbsd.study.toyshow.show import DEFAULT_SIZE, ToyShowError, catalog_toml, render_show


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT, e.g. 2048x1365") from None
    return width, height


def _numbers(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of numbers, e.g. 1,3,6,8") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bbsd.study.toyshow", description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="folder for the photos and truth.jsonl")
    parser.add_argument("--seed", type=int, default=1, help="which show (default 1)")
    parser.add_argument("--photos", type=int, default=50, help="how many photos (default 50)")
    parser.add_argument("--size", type=_size, default=DEFAULT_SIZE, help="WIDTHxHEIGHT of the upright photo "
                        f"(default {DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]}; camera exports: 2048x1365, 6000x4000)")
    parser.add_argument("--orientations", type=_numbers, default=[1],
                        help="EXIF orientations to draw from, e.g. 1,3,6,8 (default 1)")
    parser.add_argument("--catalog", action="store_true", help="also write catalog.toml (the cast) into OUT")
    args = parser.parse_args(argv)
    logs.configure("info", "console")  # the event goes to stderr; stdout holds only the manifest's path
    try:
        manifest = render_show(args.out, args.seed, args.photos, args.size, args.orientations)
    except ToyShowError as e:
        print(f"error: {e.one_line()}", file=sys.stderr)
        return 2
    if args.catalog:
        (args.out / "catalog.toml").write_text(catalog_toml(), encoding="utf-8")
    print(manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
