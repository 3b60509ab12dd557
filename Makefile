# Two entry points for a fresh machine (see README "Quick start"):
#   make demo   set up, then run the daemon on sample photos with a tiny random-weight model
#   make test   set up, then lint and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: setup tools release-tools demo test lint bench fuzz release clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	@echo "Installing bbsd; llama-cpp-python compiles llama.cpp on first install (about 6 minutes on 2 cores)."
	$(VENV)/bin/pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)

demo: setup
	$(VENV)/bin/bbsd demo --dir demo

# Tools the tests use as independent judges (Debian packages): exiftool reads our XMP,
# systemd-analyze verifies the unit and scores its sandboxing.
TOOLS := exiftool:libimage-exiftool-perl systemd-analyze:systemd
tools:
	@for pair in $(TOOLS); do cmd=$${pair%%:*}; pkg=$${pair#*:}; \
	  command -v $$cmd >/dev/null && continue; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$pkg || exit 1; \
	  else echo "$$cmd missing: sudo apt-get install $$pkg"; exit 1; fi; done

lint: setup
	$(VENV)/bin/ruff check bbsd tests bench

test: lint tools
	$(VENV)/bin/python -m pytest

# The long fuzz run: 300 mutated files for each of five seeds into a running daemon (make test runs 200 of one).
# BBSD_FUZZ_CORPUS=/path/to/camera/files adds your own photos as seeds.
fuzz: setup
	BBSD_FUZZ_FILES=300 BBSD_FUZZ_SEED=1,2,3,4,5 $(VENV)/bin/python -m pytest tests/test_fuzz.py -v

# qemu-user runs the artefact on an emulated CPU without AVX (Nehalem) in the release test.
release-tools:
	@command -v qemu-x86_64 >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user; \
	  else echo "qemu-x86_64 missing: sudo apt-get install qemu-user"; exit 1; fi; }

# The venue artefact: build it from this checkout, then its release smoke test (clean environment,
# no Python on the PATH, an emulated pre-AVX CPU). Size and cold start go to docs/benchmarks.md.
release: setup release-tools
	build/build.sh
	BBSD_ARTEFACT=$$(ls build/out/bbsd-*-linux-x86_64.tar.gz) $(VENV)/bin/python -m pytest tests/test_release.py -v

# Benchmarks rewrite their tables in docs/benchmarks.md (not part of `make test`).
bench: setup  # bench.gpu needs a GPU and a CUDA build: run it by hand there
	$(VENV)/bin/python -m bench.decode
	$(VENV)/bin/python -m bench.speed

clean:
	rm -rf $(VENV) demo .pytest_cache .ruff_cache
