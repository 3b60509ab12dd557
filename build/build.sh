#!/usr/bin/env bash
# Build the venue artefact from a clean checkout: build/out/bbsd-<version>-linux-x86_64.tar.gz
#
#   build/build.sh            CPU build: portable llama.cpp (no -march=native), all CPU variants,
#                             chosen at run time by what the venue PC supports
#   BBSD_CUDA=1 build/build.sh   the same plus the CUDA backend (needs the CUDA toolkit; see README)
#
# The portable llama-cpp-python wheel takes ~15 minutes on 2 cores; it is cached in
# $BBSD_BUILD_CACHE (default ~/.cache/bbsd-build) under a key that includes its cmake flags,
# because pip's own wheel cache ignores CMAKE_ARGS and would hand back a -march=native build.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/build/out
CACHE=${BBSD_BUILD_CACHE:-$HOME/.cache/bbsd-build}
PYTHON=${PYTHON:-python3}
LLAMA_VERSION=$(grep -o 'llama-cpp-python==[0-9.]*' "$ROOT/pyproject.toml" | cut -d= -f3)
CMAKE_FLAGS="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON"
[ "${BBSD_CUDA:-0}" = 1 ] && CMAKE_FLAGS="$CMAKE_FLAGS -DGGML_CUDA=ON"
KEY=$(echo "$LLAMA_VERSION $CMAKE_FLAGS" | cksum | cut -d' ' -f1)
WHEELS=$CACHE/$KEY/wheels
BUILD_DIR=$CACHE/$KEY/llama-build
say() { printf '\n== %s\n' "$*"; }

say "portable llama-cpp-python $LLAMA_VERSION ($CMAKE_FLAGS)"
if ! ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1 || ! ls "$BUILD_DIR"/bin/libggml-cpu-*.so >/dev/null 2>&1; then
  mkdir -p "$WHEELS"
  "$PYTHON" -m venv "$CACHE/$KEY/wheelenv"
  "$CACHE/$KEY/wheelenv/bin/pip" install -q --upgrade pip
  CMAKE_ARGS="$CMAKE_FLAGS" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
    "$CACHE/$KEY/wheelenv/bin/pip" wheel --no-deps --no-cache-dir \
    --config-settings=build-dir="$BUILD_DIR" -w "$WHEELS" "llama-cpp-python==$LLAMA_VERSION"
else
  echo "cached: $(ls "$WHEELS"/*.whl)"
fi

say "build environment"
rm -rf "$OUT"
mkdir -p "$OUT"
"$PYTHON" -m venv "$OUT/venv"
PIP="$OUT/venv/bin/pip"
$PIP install -q --upgrade pip
$PIP install -q "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl
$PIP install -q "$ROOT" "pyinstaller==6.22.3"
SITE=$("$OUT/venv/bin/python" -c 'import llama_cpp, pathlib; print(pathlib.Path(llama_cpp.__file__).parent)')
# llama-cpp-python installs only the `ggml-cpu` target; the per-variant CPU backends of a
# GGML_CPU_ALL_VARIANTS build are separate modules that it leaves in the build tree.
cp "$BUILD_DIR"/bin/libggml-cpu-*.so "$SITE/lib/"
[ "${BBSD_CUDA:-0}" = 1 ] && cp "$BUILD_DIR"/bin/libggml-cuda.so "$SITE/lib/"
echo "CPU variants: $(cd "$SITE/lib" && ls libggml-cpu-*.so | tr '\n' ' ')"

say "pyinstaller (onedir)"
"$OUT/venv/bin/pyinstaller" --noconfirm --log-level WARN --distpath "$OUT/dist" --workpath "$OUT/work" \
  "$ROOT/build/bbsd.spec"
mkdir -p "$OUT/dist/bbsd/gguf_models" "$OUT/dist/bbsd/systemd"
cp "$ROOT/gguf_models/README.md" "$OUT/dist/bbsd/gguf_models/"  # the registry ships inside the package
cp "$ROOT/config.toml" "$ROOT/README.md" "$ROOT/CHANGELOG.md" "$OUT/dist/bbsd/"
cp -r "$ROOT/docs" "$OUT/dist/bbsd/"  # the README's links: the stage tech's and the editor's pages on the venue PC
cp "$ROOT/systemd/bbsd.service" "$OUT/dist/bbsd/systemd/"
VERSION=$("$OUT/dist/bbsd/bbsd" --version | cut -d' ' -f2)
TARBALL="$OUT/bbsd-$VERSION-linux-x86_64.tar.gz"
tar -C "$OUT/dist" -czf "$TARBALL" bbsd
echo "artefact: $TARBALL ($(du -h "$TARBALL" | cut -f1))"

say "measure size and cold start"
"$OUT/venv/bin/python" "$ROOT/build/measure.py" "$TARBALL"
