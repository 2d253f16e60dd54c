# The README's commands. `make demo` and `make test` create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
MARSSEG := $(VENV)/bin/marsseg
DEMO := demo

.PHONY: demo test bench lint clean

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
	@echo
	@echo "demo done: submission $(DEMO)/submission.csv; metrics $(DEMO)/run/metrics.json;"
	@echo "plots $(DEMO)/run/curves.png, $(DEMO)/run/confusion.png, $(DEMO)/run/worst_test.png, $(DEMO)/removed.png"

test: $(VENV)/.installed
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) benchmarks/augment.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(DEMO)
