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

# The paper's pipeline on the defaults, into runs/demo: models table, a short training
# run, the shipped Q-Segment evaluated (Table IV, figures), the sensor-scale model
# quantized to INT8 with MCT, evaluated and converted for the IMX500, exported for a
# microcontroller (TFLite-Micro) and evaluated there, and predict on a fundus image.
# About 6 minutes on 2 cores.
DATA ?= $(or $(QSEGMENT_DATA),../shared/data/CHASEDB1)
demo: venv
	rm -rf runs/demo
	$(BIN)/qsegment models
	$(BIN)/qsegment train --preset fast --epochs 2 --repeats 1 --val-every 1 --out runs/demo/train
	$(BIN)/qsegment evaluate qsegment-nearest --size 312 --out runs/demo/eval
	$(BIN)/qsegment quantize qsegment-nearest-312 -o runs/demo/int8/ptq312.onnx --size 312 --calibration 8
	$(BIN)/qsegment evaluate runs/demo/int8/ptq312.onnx --out runs/demo/int8/eval
	$(BIN)/qsegment export runs/demo/int8/ptq312.onnx --target imx500 --size 312 -o runs/demo/imx500
	$(BIN)/qsegment export qsegment-nearest-312 --target tflite-micro --size 112 -o runs/demo/mcu
	$(BIN)/qsegment evaluate runs/demo/mcu/qsegment.tflite --no-figures
	$(BIN)/qsegment predict $(DATA)/Image_11L.jpg -o runs/demo/predict --overlay

test: venv
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest -q --durations=30
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

lint: venv
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
