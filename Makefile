# One command to set up and run the demo (`make demo`), one to set up and run the tests
# (`make test`). Everything lives in .venv; torch is the CPU build.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0

.PHONY: demo test lint setup system-packages clean

$(BIN)/vqflow: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/vqflow

# Fashion-MNIST for the loader test on the real files (Debian package; needs root).
system-packages:
	@if [ ! -d /usr/share/datasets/fashion-mnist ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
	      || echo "note: could not install dataset-fashion-mnist; its real-data test will be skipped"; \
	  else echo "note: run 'sudo apt-get install dataset-fashion-mnist' to test on the real files"; fi; \
	fi

demo: setup
	$(BIN)/vqflow demo

# The linter and formatter check (configured in pyproject.toml) are part of the tests.
lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: setup system-packages lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
