# The two Quickstart commands: `make demo` and `make test`. Both set up what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup data demo test test-slow

setup: $(VENV)/.installed jpanning/_onednn_conv.so

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

# oneDNN's convolutions for XLA:CPU (jpanning.onednn): oneDNN 3.2 pip-installed into the venv
# (ONEDNN=pip, the default) or Debian's libdnnl-dev 2.6 (ONEDNN=debian), then a g++ build
# against jaxlib's FFI headers; without it, XLA's convolutions. Phony: the script rebuilds when
# the source, the script or the ONEDNN choice changed.
ONEDNN ?= pip
.PHONY: jpanning/_onednn_conv.so
jpanning/_onednn_conv.so: $(VENV)/.installed
	@ONEDNN=$(ONEDNN) sh scripts/build_onednn.sh $(PY)

# Fashion-MNIST from Debian's dataset-fashion-mnist: the built-in offline default data.
data:
	@sh scripts/install_data.sh

# RL Panning screens ResNet-20 at 95% sparsity with the policy that ships (no search) on the
# default data, then a short training and the test (minutes on 2 cores); rerunnable.
demo: setup data
	$(PY) run.py --model resnet20 --ratio 0.95 --epochs 2 --train-limit 10000 \
		--out runs/demo --overwrite

# The default test suite (under 10 minutes on 2 cores).
test: setup data
	$(PY) -m pytest -q -m "not slow" --durations=10

# Tests marked slow; exit code 5 (none selected) is not a failure.
test-slow: setup data
	$(PY) -m pytest -q -m slow --durations=5; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; else exit $$rc; fi
