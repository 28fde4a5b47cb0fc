# `make demo`: set up .venv if missing, run the offline demo pipeline, print its table.
# `make test`: set up .venv if missing, run the test suite.
# `make bench`: set up .venv if missing, print speed and memory figures.
# `make pipelines`: copy dvc.yaml into the configuration folders after editing it.
# `make cifar10-cpu`: the CPU-sized CIFAR-10 run, all five attacks (about 2 h 20 min on 2 cores; needs ../shared).
VENV ?= .venv
export PATH := $(abspath $(VENV))/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export DVC_SITE_CACHE_DIR := $(abspath .dvc-site-cache)

.PHONY: demo test bench cifar10-cpu pipelines

$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --disable-pip-version-check -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	cd demo && dvc repro
	@cat demo/metrics/results.md

test: $(VENV)/.installed
	python -m pytest -q

cifar10-cpu: $(VENV)/.installed
	cd cifar10-cpu && dvc repro
	@cat cifar10-cpu/metrics/results.md

bench: $(VENV)/.installed
	python -m benchmarks.bench

pipelines:
	for config in demo cifar10-cpu; do cp dvc.yaml $$config/dvc.yaml; done
