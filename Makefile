# sealgate: every target bootstraps its own virtual environment from the project's files.
PY ?= python3
VENV := .venv
FUZZ_SECONDS ?= 600
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all demo test test-slow test-inprocess lint protos bench fuzz clean

all: test

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip wheel setuptools
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps "tensorflow-serving-api==2.21.0"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sealgate demo

test: $(STAMP)
	$(BIN)/ruff check gateway fl tests bench fuzz
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# the gateway's suites again with models in the gateway's process (`[backend] isolation = "none"`; the default
# run has them in worker processes)
test-inprocess: $(STAMP)
	SEALGATE_TEST_ISOLATION=none $(BIN)/python -m pytest -q tests/server tests/security tests/serving

# mypy: strict on gateway/ and fl/ ([tool.mypy] in pyproject.toml)
lint: $(STAMP)
	$(BIN)/ruff check gateway fl tests bench fuzz
	$(BIN)/ruff format --check gateway fl tests bench fuzz
	$(BIN)/mypy

protos: $(STAMP)
	$(BIN)/python -m gateway.protos.generate

bench: $(STAMP)
	$(BIN)/sealgate bench seal
	$(BIN)/sealgate bench serve
	$(BIN)/sealgate bench optimize
	$(BIN)/sealgate bench privacy

# the Triton peer (bench/triton_peer.py): PyTriton's bundled tritonserver 2.51 in its own venv; not in `test` or `bench`
TRITON_VENV ?= .venv-triton
TRITON_ARGS ?=
.PHONY: bench-triton
$(TRITON_VENV)/.installed:
	test -x $(TRITON_VENV)/bin/python || $(PY) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q "nvidia-pytriton==0.7.0" "onnxruntime==1.32.0" "numpy==1.26.4"
	touch $@

bench-triton: $(STAMP) $(TRITON_VENV)/.installed
	$(BIN)/python bench/triton_peer.py --triton-python $(abspath $(TRITON_VENV))/bin/python $(TRITON_ARGS)

# every fuzz harness for FUZZ_SECONDS each (coverage-guided, atheris); a crash fails the target
fuzz: $(STAMP)
	$(BIN)/python -m fuzz.run --seconds $(FUZZ_SECONDS)

# the container image localhost/sealgate:0.1.0 (Containerfile): debootstrap + buildah, needs root; not in `test`
.PHONY: image
image: $(STAMP)
	PY=$(BIN)/python sh deploy/container/build.sh

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
