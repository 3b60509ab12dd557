#!/usr/bin/env bash
# Build llama.cpp with CUDA, once, for a GPU benchmark run: the shared libraries llama-cpp-python loads,
# plus llama-server and llama-mtmd-cli from the same build, so every setup of bench/speed.py runs the
# same kernels. The source is the llama.cpp vendored in the pinned llama-cpp-python sdist (never a
# downloaded binary), given as that sdist or a tarball of its `llama_cpp/` and `vendor/llama.cpp/`.
#
#   bench/cuda.sh SOURCE.tar.gz OUT_DIR          # ~5-8 min on 16 cores for one GPU architecture
#   CUDA_ARCH=90 (default: Hopper, H100/H200)     JOBS=16 (default: all cores)
#
# Afterwards: PYTHONPATH=OUT_DIR/site makes `import llama_cpp` load the CUDA libraries, and
# BBSD_LLAMA_TOOLS=OUT_DIR/bin points bench/speed.py at llama-server and llama-mtmd-cli.
# Uses the system gcc/g++ where there is one: a llama.cpp built by another toolchain than the
# runtime's libstdc++ crashed in the tokenizer on a lent H100 (docs/benchmarks.md, GPU section).
set -euo pipefail

src_tar="$1"
out="$(mkdir -p "$2" && cd "$2" && pwd)"
if [ -x "$out/bin/llama-server" ] && [ -d "$out/site/llama_cpp/lib" ]; then
  echo "cuda.sh: already built in $out" >&2
  exit 0
fi
rm -rf "$out/src" && mkdir -p "$out/src"
tar -xzf "$src_tar" -C "$out/src" --strip-components="$(tar -tzf "$src_tar" | head -1 | grep -q '^llama_cpp_python' && echo 1 || echo 0)"
cc_args=()
if [ -x /usr/bin/gcc ] && [ -x /usr/bin/g++ ]; then
  cc_args=(-DCMAKE_C_COMPILER=/usr/bin/gcc -DCMAKE_CXX_COMPILER=/usr/bin/g++)
fi
cmake -S "$out/src/vendor/llama.cpp" -B "$out/build" -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90}" -DBUILD_SHARED_LIBS=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DGGML_NATIVE=ON "${cc_args[@]}" >&2
cmake --build "$out/build" --target llama mtmd llama-server llama-mtmd-cli -j "${JOBS:-$(nproc)}" >&2
mkdir -p "$out/site/llama_cpp/lib" "$out/bin"
cp -r "$out/src/llama_cpp/." "$out/site/llama_cpp/"
find "$out/build" -name "*.so*" \( -type f -o -type l \) -exec cp -P {} "$out/site/llama_cpp/lib/" \;
ln -sf "$out/build/bin/llama-server" "$out/build/bin/llama-mtmd-cli" "$out/bin/"
echo "cuda.sh: built in $out" >&2
