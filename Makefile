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

.PHONY: venv test demo lint bench node-bench bench-latency ablation real-videos default-model gpu-check clean

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

bench-latency: venv  # one side-by-side table per model (docs/cpu_inference.md); run on an idle machine
	$(PY) bench/latency.py --model-config bench/small.yaml config/model/d101_18_cityscapes.yaml --sizes 256x512 \
		--threads 2 --backends torch-cpu torch-cpu-bf16 onnxruntime onnxruntime-int8 openvino openvino-int8

ablation: venv
	$(PY) bench/ablation.py --out runs/ablation

# Real street clips for the default model's adaptation and bench/real_video.py (never in `make test`):
# vtest.avi from Debian's opencv-doc (a 95 MB package; only the 8 MB clip is kept) in data_cache/videos/.
real-videos: data_cache/videos/vtest.avi

data_cache/videos/vtest.avi:
	rm -rf data_cache/deb && mkdir -p data_cache/deb data_cache/videos
	cd data_cache/deb && apt-get download opencv-doc
	dpkg -x data_cache/deb/opencv-doc_*.deb data_cache/deb/x
	cp data_cache/deb/x/usr/share/doc/opencv-doc/examples/data/vtest.avi $@
	rm -rf data_cache/deb

# The shipped default model, end to end (models/mila_street_lite.md; ~1 h on 2 CPU cores).
default-model: venv real-videos
	$(VENV)/bin/mtl-data generate --clips 240 --frames 12 --size 192x384 --randomize all --seed 0 --out runs/street/train
	$(VENV)/bin/mtl-data generate --clips 16 --frames 8 --size 192x384 --randomize all --seed 100000 --out runs/street/val
	$(VENV)/bin/mtl-data generate --clips 16 --frames 8 --size 192x384 --domain target --seed 200000 --out runs/street/target
	$(VENV)/bin/mtl-train --config config/train/street_lite.yaml --set stages.1.epochs=0 --set stages.2.epochs=0
	$(VENV)/bin/mtl-train --config config/train/street_lite_adapt.yaml
	$(VENV)/bin/mtl-train --config config/train/street_lite_flicker.yaml
	# stage 4 (models/mila_street_lite.md): temporal_consistency 40 steps on the first 130 clips, 80 on all
	# 240 (temporal weight 2), then 60 supervised steps without adaptation
	$(VENV)/bin/mtl-train --config config/train/street_lite_flicker_temporal.yaml --out runs/pilot_temporal \
		--set data.train.max_clips=130 --set stages.0.steps_per_epoch=40
	$(VENV)/bin/mtl-train --config config/train/street_lite_flicker_temporal.yaml --out runs/main_temporal \
		--set init=runs/pilot_temporal/stage_joint.pt --set stages.0.steps_per_epoch=80 --set adapt.temporal.weight=2.0
	$(VENV)/bin/mtl-train --config config/train/street_lite_flicker_temporal.yaml --out runs/sup_polish \
		--set init=runs/main_temporal/stage_joint.pt --set stages.0.steps_per_epoch=60 --set adapt=null --set seed=3
	# stage 5: keyframe_arrival with the slot weight 0.25, shipped as 0.2 x stage 4 + 0.8 x stage 5 (WiSE-FT)
	$(VENV)/bin/mtl-train --config config/train/street_lite_arrival_gentle.yaml --out runs/arrival_slot \
		--set model_override.propagation.nonkey_slot_weight=0.25
	$(PY) bench/ship_model.py --checkpoint runs/sup_polish/stage_joint.pt --tuned runs/arrival_slot/stage_joint.pt \
		--alpha 0.8 --set propagation.nonkey_slot_weight=0.25 --out models/mila_street_lite.pt \
		--input-size 192x384 --meta models/mila_street_lite.meta.json

# On a GPU machine: its own .venv-gpu (CUDA torch, TensorRT 10), every GPU test and measurement,
# table in gpu_check_out/gpu_check.md (docs/backends.md). `make gpu-check GPU_CHECK=--dry-run` lists the steps.
gpu-check:
	$(PYTHON) bench/gpu_check.py $(GPU_CHECK)

clean:
	rm -rf $(VENV) demo_out build install log
