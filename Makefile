# sealgate: every target bootstraps its own virtual environment from the project's files.
PY ?= python3
VENV := .venv
FUZZ_SECONDS ?= 600
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all demo test test-slow lint protos bench fuzz clean

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

# every fuzz harness for FUZZ_SECONDS each (coverage-guided, atheris); a crash fails the target
fuzz: $(STAMP)
	$(BIN)/python -m fuzz.run --seconds $(FUZZ_SECONDS)

# the container image localhost/sealgate:0.1.0 (Containerfile): debootstrap + buildah, needs root; not in `test`
.PHONY: image
image: $(STAMP)
	PY=$(BIN)/python sh deploy/container/build.sh

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
