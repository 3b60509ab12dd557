"""The converter's child process: llama.cpp's own conversion code, extended for InternVL checkpoints.

Runs as `python -m bbsd.convert.runner CHECKPOINT TEXT_OUT MMPROJ_OUT OUTTYPE NAME` so that llama.cpp's gguf-py
(newer than the `gguf` bbsd reads models with) and its `conversion` package, vendored in `llamacpp/`,
come first on sys.path here and nowhere else, and so that the converter's memory goes back to the OS
when it ends. Exit 0 with both GGUFs written, non-zero with a traceback on stderr.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

VENDOR = Path(__file__).resolve().parent / "llamacpp"


def main(argv: list[str]) -> int:
    src, text, mmproj, outtype, name = argv
    sys.path[:0] = [str(VENDOR / "gguf-py"), str(VENDOR)]
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from bbsd.models.convert import internvl  # imports the vendored `conversion` package: after the path is set

    internvl.convert("text", Path(src), Path(text), outtype, name)
    internvl.convert("mmproj", Path(src), Path(mmproj), "f16", name)  # llama.cpp's advice for projectors
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
