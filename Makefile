# Fresh machine: `make test` creates .venv (torch 2.13.0 CPU wheel, no CUDA packages) and runs the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup test serve train simclr reproduce export offsets evaluate bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# the pinned CPU wheel first, so that nothing later resolves "torch" to the CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[train,test]"
	@$(PY) -m pip list 2>/dev/null | grep -i '^nvidia' && { echo "CUDA packages were pulled in"; exit 1; } || true

setup: $(PY)

test: setup
	$(PY) -m pytest -q

# the HTTP service on the shipped model (models/default), settings from SSLIC_* variables (docs/service.md)
serve: setup
	$(VENV)/bin/sslic serve

simclr: setup
	$(PY) -m model_export.simclr --resume

train: setup
	$(PY) -m model_export.train --config configs/default.yaml --resume

# the shipped model from scratch, every stage of configs/recipe.yaml in order (resumable; runs/reproduce)
reproduce: setup
	$(PY) -m model_export.reproduce --out runs/reproduce/sslic_default.pt

export: setup
	$(PY) -m model_export.export checkpoints/sslic_default.pt models/default --fit-tables ../shared/data/train --fit-rdoq 0.6,0.15,0.2,0

# the decoder's input offsets for the symbols the exported model codes (after `make export`; export again after it)
offsets: setup
	$(PY) -m model_export.fit_offsets checkpoints/sslic_default.pt models/default --out checkpoints/sslic_default.pt

evaluate: setup
	$(PY) -m model_export.evaluate --model-dir models/default --out docs/results

bench: setup
	$(PY) bench/bench_codecs.py --model-dir models/default --checkpoint checkpoints/sslic_default.pt

clean:
	rm -rf $(VENV) .pytest_cache
