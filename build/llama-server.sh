#!/usr/bin/env bash
# Build llama.cpp's `llama-server` (and `llama-mtmd-cli` beside it, for `bbsd bench`) once, from the
# llama.cpp sources vendored in the pinned llama-cpp-python sdist (never a downloaded binary), and
# print llama-server's path; llama-mtmd-cli lies in the same folder.
#
#   build/llama-server.sh            # builds on first use (~10 min on 2 cores), then prints the cached path
#   LLAMA_SERVER_CACHE=/dir ...      # where builds are kept (default ${XDG_CACHE_HOME:-~/.cache}/bbsd)
#   LLAMA_SERVER_CMAKE_ARGS="-DGGML_CUDA=ON" ...   # extra CMake options (they key the cache too)
#   JOBS=8 ...                       # parallel compile jobs (default: 2, CI's core count)
#
# Only these two targets are built (Release, no libcurl, no web UI download), so a cold CI run pays a
# few minutes once; the cache is keyed by the pinned version and the CMake options. GGML_NATIVE is on,
# as in the pip build of llama-cpp-python on the same machine, so a benchmark compares like with like.
# Used by the remote-backend tests (tests/engine/test_openai.py) and benchmarks (bench/openai.py, bbsd bench).
# Progress goes to stderr; stdout is the path alone.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
version="$(sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' "$here/pyproject.toml")"
python="${PYTHON:-$here/.venv/bin/python}"
[ -x "$python" ] || python=python3
extra="${LLAMA_SERVER_CMAKE_ARGS:-}"
key="$version-2-$(printf '%s' "$extra" | cksum | cut -d' ' -f1)"
cache="${LLAMA_SERVER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bbsd}/llama-server-$key"
binary="$cache/llama-server"
mtmd_cli="$cache/llama-mtmd-cli"

if [ -x "$binary" ] && [ -x "$mtmd_cli" ]; then
  echo "$binary"
  exit 0
fi

mkdir -p "$cache"
exec 9>"$cache.lock"
flock 9  # two test sessions starting at once build it once
if [ -x "$binary" ] && [ -x "$mtmd_cli" ]; then echo "$binary"; exit 0; fi

work="$(mktemp -d "$cache.work.XXXXXX")"
trap 'rm -rf "$work"' EXIT
echo "llama-server.sh: building llama-server from llama-cpp-python $version (once; cached in $cache)" >&2
# The sdist only; its build dependencies stay wheels (an :all: no-binary would compile CMake itself).
"$python" -m pip download --quiet --no-deps --no-binary llama-cpp-python "llama-cpp-python==$version" -d "$work" >&2
tar -xzf "$work"/llama_cpp_python-"$version".tar.gz -C "$work"
src="$work/llama_cpp_python-$version/vendor/llama.cpp"
cmake_bin="$(command -v cmake || true)"
if [ -z "$cmake_bin" ]; then
  "$python" -m pip install --quiet cmake >&2
  cmake_bin="$(dirname "$python")/cmake"
fi
# shellcheck disable=SC2086  # $extra is a list of options
"$cmake_bin" -S "$src" -B "$work/b" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON $extra >&2
"$cmake_bin" --build "$work/b" --target llama-server llama-mtmd-cli -j "${JOBS:-2}" >&2
install -m 755 "$work/b/bin/llama-mtmd-cli" "$mtmd_cli.tmp"
mv "$mtmd_cli.tmp" "$mtmd_cli"
install -m 755 "$work/b/bin/llama-server" "$binary.tmp"
mv "$binary.tmp" "$binary"
echo "$binary"
