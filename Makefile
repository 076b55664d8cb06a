# The two commands of the README: `make test` and `make demo`. Every install step lives here.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

# ROS 2 traffic stays on loopback (ROS_LOCALHOST_ONLY is ignored by Kilted), and Fast DDS's
# LARGE_DATA transport keeps best-effort images above ~512 KB from being dropped silently.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export FASTDDS_BUILTIN_TRANSPORTS := LARGE_DATA
export RMW_IMPLEMENTATION := rmw_fastrtps_cpp
export PYTHONDONTWRITEBYTECODE := 1

ROS_WHEELS := ros-rclpy ros-rmw-fastrtps-cpp ros-sensor-msgs ros-std-msgs ros-diagnostic-msgs ros-std-srvs

.PHONY: venv test demo lint bench node-bench bench-latency ablation gpu-check clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# Pinned: torch==2.13.0 is the local CPU wheel; any other spec downloads GBs of CUDA packages.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q $(ROS_WHEELS)
	$(PIP) install -q -e '.[test,train]'
	touch $@

test: venv
	$(PY) -m pytest -q test

lint: venv
	$(VENV)/bin/ruff check .

demo: venv
	$(PY) -m mtl_perception.tools.demo --out demo_out

bench: venv
	$(PY) bench/flops.py
	$(PY) bench/ila.py
	$(PY) bench/data_fps.py

node-bench: venv
	$(PY) bench/node_latency.py

bench-latency: venv
	$(PY) bench/latency.py --model-config config/model/d101_18_cityscapes.yaml --sizes 256x512 --backends torch-cpu onnxruntime

ablation: venv
	$(PY) bench/ablation.py --out runs/ablation

# On a GPU machine: its own .venv-gpu (CUDA torch, TensorRT 10), every GPU test and measurement,
# table in gpu_check_out/gpu_check.md (docs/backends.md). `make gpu-check GPU_CHECK=--dry-run` lists the steps.
gpu-check:
	$(PYTHON) bench/gpu_check.py $(GPU_CHECK)

clean:
	rm -rf $(VENV) demo_out build install log
