# fcn8s_tf: every target uses .venv and creates it first if it is missing.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= data/demo
PYTEST_ARGS ?=

.PHONY: install test test-fast demo bench clean

install: $(STAMP)

# Reinstall when the dependency pins or the package metadata change.
$(STAMP): setup.cfg requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements/constraints.txt -e '.[cpu,test]'
	touch $(STAMP)

# The whole suite (slow tests included); `make test-fast` skips the few marked slow.
test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# The main job end to end on built-in synthetic data (tools/make_demo_dataset.py).
demo: $(STAMP)
	$(PY) tools/make_demo_dataset.py --output_dir=$(DEMO_DIR)/raw --seed=0
	$(PY) tools/make_tfrecords.py --voc_root=$(DEMO_DIR)/raw/VOCdevkit/VOC2012 \
	    --sbd_root=$(DEMO_DIR)/raw/benchmark_RELEASE/dataset \
	    --output_dir=$(DEMO_DIR)/tfrecords --overwrite
	@echo "Demo TFRecords and manifest: $(DEMO_DIR)/tfrecords (manifest.json)"

bench: $(STAMP)
	$(PY) tools/benchmark.py --output=BENCHMARKS.md --json_output=benchmarks.json

clean:
	rm -rf $(VENV) data/demo build dist *.egg-info
