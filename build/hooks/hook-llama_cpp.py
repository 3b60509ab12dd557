# PyInstaller has no hook for llama-cpp-python: bundle its shared libraries (libllama, libggml*,
# libmtmd, and in the portable build one libggml-cpu-<variant>.so per instruction-set level)
# into llama_cpp/lib, where llama_cpp and bbsd.backends look for them.
from pathlib import Path

import llama_cpp

_lib = Path(llama_cpp.__file__).resolve().parent / "lib"
binaries = [(str(p), "llama_cpp/lib") for p in sorted(_lib.iterdir()) if ".so" in p.name]
hiddenimports = ["llama_cpp.mtmd_cpp", "llama_cpp.llama_grammar", "llama_cpp._ggml"]
