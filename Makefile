# Two entry points for a fresh machine (see README "Quick start"):
#   make demo   set up the daemon, then run it on toy-show photos with bbsd's trained toy model
#   make test   set up the daemon and its test tools, then lint and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
# The tests of `bbsd models convert` need torch, CPU build: the local version label pins it, so PyPI's
# CUDA build (several GB) is never taken. It comes from the configured indexes where they hold it
# (these machines keep the 190 MB wheel on disk), else from PyTorch's CPU wheel index.
CONVERT_TORCH ?= 2.13.0+cpu
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
DEV_STAMP := $(VENV)/.dev-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: setup dev tools release-tools systemd-tools demo test lint bench fuzz release systemd-test clean vendor-convert

# What the daemon needs, nothing more: `make demo`'s .venv holds no test tools and no torch.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	@echo "Installing bbsd; llama-cpp-python compiles llama.cpp on first install (about 6 minutes on 2 cores)."
	$(VENV)/bin/pip install --quiet -e .
	rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)

# The test tools and the convert extra (torch, CPU build), for make test, fuzz, release and bench.
$(DEV_STAMP): $(STAMP)
	$(VENV)/bin/pip install --quiet -e '.[test]'
	@echo "Installing the convert extra for its tests: torch $(CONVERT_TORCH) (see docs/producer/convert.md)."
	$(VENV)/bin/pip install --quiet -e '.[test,convert]' 'torch==$(CONVERT_TORCH)' 2>/dev/null || \
	  $(VENV)/bin/pip install --quiet -e '.[test,convert]' 'torch==$(CONVERT_TORCH)' --extra-index-url $(TORCH_CPU_INDEX)
	rm -f $(VENV)/.dev-* && touch $@

dev: $(DEV_STAMP)

demo: setup
	$(VENV)/bin/bbsd demo --dir demo

# Tools the tests use as independent judges (Debian packages): exiftool and exiv2 (the library
# digiKam and darktable read XMP with) read our XMP, systemd-analyze verifies the unit and scores its sandboxing,
# headless Chromium renders `bbsd eval`'s HTML report.
TOOLS := exiftool:libimage-exiftool-perl exiv2:exiv2 systemd-analyze:systemd chromium-headless-shell:chromium-headless-shell
tools:
	@for pair in $(TOOLS); do cmd=$${pair%%:*}; pkg=$${pair#*:}; \
	  command -v $$cmd >/dev/null && continue; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$pkg || exit 1; \
	  else echo "$$cmd missing: sudo apt-get install $$pkg"; exit 1; fi; done

lint: dev
	$(VENV)/bin/ruff check bbsd tests bench train
	$(VENV)/bin/lint-imports --no-cache

test: lint tools
	$(VENV)/bin/python -m pytest

# The long fuzz run: 300 mutated files for each of five seeds into a running daemon (make test runs 200 of one).
# BBSD_FUZZ_CORPUS=/path/to/camera/files adds your own photos as seeds.
fuzz: dev
	BBSD_FUZZ_FILES=300 BBSD_FUZZ_SEED=1,2,3,4,5 $(VENV)/bin/python -m pytest tests/e2e/test_fuzz.py -v

# qemu-user runs the artefact on an emulated CPU without AVX (Nehalem) in the release test.
release-tools:
	@command -v qemu-x86_64 >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-user; \
	  else echo "qemu-x86_64 missing: sudo apt-get install qemu-user"; exit 1; fi; }

# The venue artefact: build it from this checkout, then its release smoke test (clean environment,
# no Python on the PATH, an emulated pre-AVX CPU). Size and cold start go to docs/benchmarks.md.
release: dev release-tools
	build/build.sh
	BBSD_ARTEFACT=$$(ls build/out/bbsd-*-linux-x86_64.tar.gz) $(VENV)/bin/python -m pytest tests/e2e/test_release.py -v

# The venue artefact under a live systemd (docs/developer/testing.md): a Debian rootfs from Debian's packages
# (debootstrap, cached in SYSTEMD_ROOTFS) boots systemd in systemd-nspawn; the test installs the artefact as
# docs/stage/install.md says and drives it with systemctl. Needs root and two Debian packages, installed as `tools`
# does (apt-get install --no-install-recommends debootstrap systemd-container). Uses build/out's artefact
# (make release rebuilds it), else builds one. Its log: build/out/systemd-test.log.
SYSTEMD_ROOTFS ?= $(HOME)/.cache/bbsd-systemd/rootfs
systemd-tools:
	@$(MAKE) --no-print-directory tools TOOLS="debootstrap:debootstrap systemd-nspawn:systemd-container"

systemd-test: dev systemd-tools
	@[ "$$(id -u)" = 0 ] || { echo "make systemd-test boots a container: run it as root"; exit 1; }
	[ -d $(SYSTEMD_ROOTFS) ] || { rm -rf $(SYSTEMD_ROOTFS).tmp && \
	  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,sudo bookworm $(SYSTEMD_ROOTFS).tmp && \
	  mv $(SYSTEMD_ROOTFS).tmp $(SYSTEMD_ROOTFS); }
	ls build/out/bbsd-*-linux-x86_64.tar.gz >/dev/null 2>&1 || build/build.sh
	BBSD_ARTEFACT=$$(ls build/out/bbsd-*-linux-x86_64.tar.gz) BBSD_SYSTEMD_ROOTFS=$(SYSTEMD_ROOTFS) \
	  $(VENV)/bin/python -m pytest tests/e2e/test_systemd_live.py -v -p no:cacheprovider

# Benchmarks rewrite their tables in docs/benchmarks.md (not part of `make test`).
bench: dev  # bench.gpu needs a GPU and a CUDA build: run it by hand there
	$(VENV)/bin/python -m bench.decode
	$(VENV)/bin/python -m bench.speed
	$(VENV)/bin/python -m bench.sampler
	$(VENV)/bin/python -m bench.tiling

clean:
	rm -rf $(VENV) demo .pytest_cache .ruff_cache

# Re-extract llama.cpp's converter from the pinned llama-cpp-python sdist into bbsd/models/convert/llamacpp (see VENDORED.md).
vendor-convert:
	tmp=$$(mktemp -d) && v=$$(grep -o 'llama-cpp-python==[0-9.]*' pyproject.toml | cut -d= -f3) && \
	$(PYTHON) -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$$v" -d $$tmp && \
	tar -C $$tmp -xzf $$tmp/llama_cpp_python-$$v.tar.gz && src=$$tmp/llama_cpp_python-$$v/vendor/llama.cpp && \
	for f in __init__ base internvl internlm llama qwen; do cp $$src/conversion/$$f.py bbsd/models/convert/llamacpp/conversion/; done && \
	cp $$src/gguf-py/gguf/*.py bbsd/models/convert/llamacpp/gguf-py/gguf/ && cp $$src/LICENSE bbsd/models/convert/llamacpp/ && rm -rf $$tmp
