# cbir: `make demo` installs what the demo needs and runs it; `make test` installs every
# extra and runs the tests; `make lean-check` proves the base install (`pip install .`).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.demo-installed
# Every extra: what `make test` needs (torch==2.13.0 pinned in each pip command below).
ALL_EXTRAS := test,train,text,plots,fast,formats,ray,milvus,onnx-clip
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FASHION := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz

.PHONY: setup system-deps demo test lint lean-check bench clean

setup: $(STAMP) system-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch==2.13.0 is pinned in pyproject.toml's extras: pip takes the local CPU build.
$(STAMP): pyproject.toml $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0 -e '.[$(ALL_EXTRAS)]'
	touch $(STAMP) $(DEMO_STAMP)

# The demo: the base install (no torch) and scikit-image's sample photos.
$(DEMO_STAMP): pyproject.toml $(BIN)/python
	$(BIN)/pip install -q -e '.[demo]'
	touch $(DEMO_STAMP)

system-deps:
	@if [ ! -f $(FASHION) ]; then \
	  echo "installing Debian's dataset-fashion-mnist"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; \
	fi
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  echo "installing Debian's chromium and chromium-driver (browser test of the web page)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium chromium-driver; \
	fi
	@if [ ! -x /usr/bin/wrk ]; then \
	  echo "installing Debian's wrk (loopback load of cbir serve: benchmarks/load.py, soak)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq wrk || echo "no wrk: the load tests use httpx"; \
	fi

demo: $(DEMO_STAMP) system-deps
	$(BIN)/python -m cbir.demo

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider

# A fresh venv in /tmp with `pip install .` (no extras, from PyPI; minutes): cbir index,
# search and serve + one HTTP request, no torch; prints the venv's size.
lean-check: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -s -m slow tests/test_lean_install.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
