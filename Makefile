# `make demo` and `make test` work as the first command on a fresh Debian/Ubuntu machine:
# both depend on `install`, which adds the system libraries ffcv builds against and ./.venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SYS_PKGS := libturbojpeg0-dev libjpeg-dev libopencv-dev pkg-config g++
# The demo: a real 10-class data set (scikit-learn's handwritten digits, shipped inside the package).
DEMO_DIR := demo_data/digits
DEMO_OUT := data/demo

.PHONY: install system-deps demo test test-fast clean

install: system-deps $(STAMP)

# ffcv compiles against libjpeg-turbo and OpenCV, the fast decoder (ffcv_utils/load/csrc) against
# libjpeg(-turbo)'s libjpeg API: install them when pkg-config cannot find them.
system-deps:
	@if pkg-config --exists libturbojpeg libjpeg opencv4 2>/dev/null && command -v g++ >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
		echo "installing system libraries: $(SYS_PKGS)"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(SYS_PKGS); \
	else \
		echo "ffcv needs system libraries; run: sudo apt-get update && sudo apt-get install -y $(SYS_PKGS)" >&2; exit 1; \
	fi

# setup.py builds the fast decoder's C extension in place: editing its source reinstalls.
$(STAMP): pyproject.toml setup.py ffcv_utils/load/csrc/fastjpeg.c
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[test,watch,hf,demo]'
	@touch $(STAMP)

demo: install
	$(PY) -m ffcv_utils.tools.sample_data digits $(DEMO_DIR)
	$(PY) write_ffcv.py --split train --cfg.data_dir $(DEMO_DIR) --cfg.write_path $(DEMO_OUT)_train.beton --cfg.max_resolution 64
	$(PY) write_ffcv.py --split val --cfg.data_dir $(DEMO_DIR) --cfg.write_path $(DEMO_OUT)_val.beton --cfg.max_resolution 64
	$(PY) -m ffcv_utils.tools.inspect_beton $(DEMO_OUT)_train.beton $(DEMO_OUT)_val.beton
	$(PY) train_imagenet.py --config-file rn18_configs/rn18_demo.yaml --data.train_dataset $(DEMO_OUT)_train.beton --data.val_dataset $(DEMO_OUT)_val.beton
	@echo "plot of the run: $$(ls -t logs/*/metrics.png | head -n 1)"

# pytest-xdist workers, one a CPU (at most 4; tests/conftest.py counts them): most of the
# suite's time is single-threaded (interpreter and library start-up, numba compiling, small CPU
# runs), so two cores take it in little more than half the time. Each test file stays on one
# worker, so its module fixtures are built once; tests/conftest.py builds the session fixtures
# once for all workers and puts the files with long tests first (--no-loadscope-reorder keeps
# that order). `make test TEST_WORKERS=0` runs it in one process.
TEST_WORKERS ?= auto
PYTEST := $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: install
	$(PYTEST)

# The inner loop: everything but the tests marked slow (see pyproject.toml's markers);
# `make test` stays the full suite.
test-fast: install
	$(PYTEST) -m "not slow"

clean:
	rm -rf $(VENV) data demo_data logs .pytest_cache
