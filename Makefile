# fcn8s_tf: every target uses .venv and creates it first if it is missing.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= data/demo
PYTEST_ARGS ?=

.PHONY: install test test-fast demo docs smoke bench bench-deps clean

install: $(STAMP)

# Reinstall when the dependency pins or the package metadata change.
$(STAMP): setup.cfg requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements/constraints.txt -e '.[cpu,test]'
	# Tests only: TF Serving's generated proto classes, to parse the warmup file back. --no-deps
	# because the package requires the full `tensorflow` distribution (BUILD.md, "Dependencies").
	$(PY) -m pip install -q --no-deps -c requirements/constraints.txt tensorflow-serving-api
	touch $(STAMP)

# The whole suite (slow tests included); `make test-fast` skips the few marked slow. One pytest-xdist
# worker per core, each test file on one worker (--dist loadfile: a module's fixtures are built
# once): most tests wait on child processes or TensorFlow's start-up, so two workers on two cores
# finish in two thirds of the time (BUILD.md, "Testing"). TEST_WORKERS=0: one process.
TEST_WORKERS ?= auto
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow" $(PYTEST_ARGS)

# The main job end to end on built-in synthetic data: generate, convert, train, evaluate, export
# (by train), predict. configs/demo.flags says what is demo-only about its settings.
demo: $(STAMP)
	$(PY) tools/make_demo_dataset.py --output_dir=$(DEMO_DIR)/raw --seed=0
	$(PY) tools/make_tfrecords.py --voc_root=$(DEMO_DIR)/raw/VOCdevkit/VOC2012 \
	    --sbd_root=$(DEMO_DIR)/raw/benchmark_RELEASE/dataset \
	    --output_dir=$(DEMO_DIR)/tfrecords --overwrite
	rm -rf $(DEMO_DIR)/run $(DEMO_DIR)/eval $(DEMO_DIR)/predictions
	$(PY) -m fcn8s_tf.train --flagfile=configs/demo.flags --workdir=$(DEMO_DIR)/run \
	    --train_data='$(DEMO_DIR)/tfrecords/train-*.tfrecord' \
	    --val_data='$(DEMO_DIR)/tfrecords/val-*.tfrecord'
	$(PY) -m fcn8s_tf.evaluate --model=$(DEMO_DIR)/run/export \
	    --data='$(DEMO_DIR)/tfrecords/val-*.tfrecord' --output_dir=$(DEMO_DIR)/eval \
	    --confusion_png --save_predictions=8
	$(PY) -m fcn8s_tf.predict --model=$(DEMO_DIR)/run/export --output_dir=$(DEMO_DIR)/predictions \
	    $$(sed -n '1,4p' $(DEMO_DIR)/raw/VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt | \
	       sed 's|^|$(DEMO_DIR)/raw/VOCdevkit/VOC2012/JPEGImages/|; s|$$|.jpg|')
	@echo
	@echo "Demo done."
	@echo "  metrics:     $(DEMO_DIR)/eval/metrics.json (confusion matrix: $(DEMO_DIR)/eval/confusion_matrix.png)"
	@echo "  overlays:    $(DEMO_DIR)/predictions/*_overlay.png"
	@echo "  SavedModel:  $(DEMO_DIR)/run/export/1"
	@echo "  TensorBoard: $(PY) -m tensorboard.main --logdir $(DEMO_DIR)/run/tensorboard"

# README's pictures, from the demo's own outputs (runs the demo first if it has not run).
docs: $(STAMP)
	test -f $(DEMO_DIR)/eval/confusion_matrix.png || $(MAKE) demo
	mkdir -p docs
	cp $(DEMO_DIR)/eval/confusion_matrix.png docs/demo_confusion_matrix.png
	cp "$$(ls $(DEMO_DIR)/predictions/*_overlay.png | head -n 1)" docs/demo_overlay.png

# Install check: two steps of a narrow net on the demo records (run `make demo` first), from an
# empty workdir each time so that it really trains and exports.
smoke: $(STAMP)
	rm -rf runs/smoke
	$(PY) -m fcn8s_tf.train --flagfile=configs/smoke.flags

# PyTorch for the side-by-side rows of `make bench` only; never a dependency of fcn8s_tf.
bench-deps: $(STAMP)
	$(PY) -m pip install -q -r requirements/bench-torch.txt

# SAMPLE_VOC_ROOT=.../VOCdevkit/VOC2012 measures on real VOC files (default: synthetic images).
bench: $(STAMP)
	$(PY) tools/benchmark.py --output=BENCHMARKS.md --json_output=benchmarks.json \
	    $(if $(SAMPLE_VOC_ROOT),--sample_voc_root="$(SAMPLE_VOC_ROOT)")

clean:
	rm -rf $(VENV) data/demo build dist *.egg-info
