# sglr-ray: `make run` sets everything up and runs a default SGLR experiment; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Default experiment: SGLR (alpha 0.5, phi 0.5), AlexNet, 5 clients, 2 epochs, on an embedded Ray.
RUN_ARGS ?= --method sglr --model alexnet --clients 5 --alpha 0.5 --phi 0.5 --epochs 2 \
	--val-samples 2000 --executor ray --out out/quickstart

.PHONY: setup data run test test-fast lint docs clean flower-venv

setup: $(BIN)/.installed data

# Plain pip in a venv: it takes torch from the machine's local wheel cache where one exists.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# Fashion-MNIST: already present, else Debian's package (as root with apt), else torchvision's downloader.
data: $(BIN)/.installed
	@if $(BIN)/sglr-ray data >/dev/null 2>&1; then \
		$(BIN)/sglr-ray data; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist \
			&& $(BIN)/sglr-ray data; \
	else \
		$(BIN)/sglr-ray data --download; \
	fi

run: setup
	$(BIN)/sglr-ray run $(RUN_ARGS)

# Unit and Ray tests in one pytest process (tests/unit includes the README's and docs' examples
# and examples/analysis.ipynb), then the `ray job submit` test in its own:
# it starts a Ray head of its own and must not share the machine with the embedded one.
# --durations: CI's log names the slowest tests, to keep the suite near 15 minutes.
test: setup
	$(BIN)/python -m pytest -m "not cluster" -q --durations=15
	$(BIN)/python -m pytest -m cluster -q tests/cluster

test-fast: setup
	$(BIN)/python -m pytest -q tests/unit

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The documentation site (docs/, mkdocs.yml) into site/; --strict fails on a broken link or reference.
docs: $(BIN)/.installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# Flower's simulation for benchmarks/flower_peer.py, in a venv of its own: flwr pins its own
# Ray (ray==2.55.1 for flwr 1.42.0), which cannot sit beside sglr-ray's Ray 2.60.
FLOWER_VENV ?= benchmarks/.flower-venv
flower-venv: $(FLOWER_VENV)/.installed

$(FLOWER_VENV)/.installed:
	$(PYTHON) -m venv $(FLOWER_VENV)
	$(FLOWER_VENV)/bin/pip install --quiet --upgrade pip
	$(FLOWER_VENV)/bin/pip install --quiet "flwr[simulation]==1.42.0" torch numpy psutil
	touch $@

clean:
	rm -rf out site .pytest_cache .ruff_cache
