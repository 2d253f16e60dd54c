# The README's commands. `make demo` and `make test` create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
MARSSEG := $(VENV)/bin/marsseg
DEMO := demo

MODEL_WORK := runs/model
SHARED := ../shared/data

.PHONY: demo test bench lint clean model

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	# torch first, pinned: this version's CPU wheel is what pip finds here; an open range pulls a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,tune,onnx]"
	touch $@

demo: $(VENV)/.installed
	$(MARSSEG) data synth --out $(DEMO)/mars_synth.npz --force
	$(MARSSEG) data inspect $(DEMO)/mars_synth.npz
	$(MARSSEG) data clean $(DEMO)/mars_synth.npz --out $(DEMO)/mars_clean.npz --show $(DEMO)/removed.png --force
	$(MARSSEG) data split $(DEMO)/mars_synth.npz
	$(MARSSEG) train --data $(DEMO)/mars_synth.npz --out $(DEMO)/run --force --epochs 10 --minutes 4
	$(MARSSEG) evaluate $(DEMO)/run --split test
	$(MARSSEG) predict $(DEMO)/run --out $(DEMO)/submission.csv --force
	$(MARSSEG) predict --images examples/frames/images --out $(DEMO)/examples --force
	@echo
	@echo "demo done: submission $(DEMO)/submission.csv; metrics $(DEMO)/run/metrics.json;"
	@echo "plots $(DEMO)/run/curves.png, $(DEMO)/run/confusion.png, $(DEMO)/run/worst_test.png, $(DEMO)/removed.png;"
	@echo "real NavCam frames labeled by the shipped model: $(DEMO)/examples/overlays/*.png"

test: $(VENV)/.installed
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) benchmarks/augment.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

# Rebuilds the shipped model (docs/model-card.md) from every labeled frame in $(SHARED) except ai4mars_sample/,
# its external test: the default recipe on mars64 merged with ai4mars_more, packed with fp16 weights, then scored
# on the sample. About 1.7 hours on two cores with native bf16.
model: $(VENV)/.installed
	$(MARSSEG) data import $(SHARED)/ai4mars_more --out $(MODEL_WORK)/ai4mars_more.npz --require-labels --force
	$(MARSSEG) data merge $(SHARED)/mars64.npz $(MODEL_WORK)/ai4mars_more.npz --out $(MODEL_WORK)/all.npz --force
	$(MARSSEG) train --data $(MODEL_WORK)/all.npz --out $(MODEL_WORK)/run --force
	$(MARSSEG) pack $(MODEL_WORK)/run --out src/marsseg/shipped/navcam.pt --half --force
	$(MARSSEG) evaluate src/marsseg/shipped/navcam.pt --images $(SHARED)/ai4mars_sample \
		--json src/marsseg/shipped/navcam.json --force

clean:
	rm -rf $(DEMO)
