# qsegment: the two commands of the README's Quick start are `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint clean

venv: $(STAMP)

# One environment for everything (torch, torchvision and Sony's edge-mdt pinned in
# requirements.txt); the package itself is installed editable on top.
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

# The paper's pipeline on the defaults: models table, a short training run, then the
# shipped pretrained Q-Segment evaluated (Table IV row, figures) into runs/demo.
demo: venv
	$(BIN)/qsegment models
	rm -rf runs/demo/train
	$(BIN)/qsegment train --preset fast --epochs 2 --repeats 1 --val-every 1 --out runs/demo/train
	$(BIN)/qsegment evaluate qsegment-nearest --size 336 --out runs/demo/eval

test: venv
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest -q
	$(BIN)/ruff check src tests benchmarks

lint: venv
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
