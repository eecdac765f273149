# cbir: `make demo` sets everything up and runs the main job; `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FASHION := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz

.PHONY: setup system-deps demo test lint bench clean

setup: $(STAMP) system-deps

# torch==2.13.0 is pinned in pyproject.toml: pip takes the local CPU build, never CUDA.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0 -e '.[test,ray,milvus]'
	touch $(STAMP)

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

demo: setup
	$(BIN)/python -m cbir.demo

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
