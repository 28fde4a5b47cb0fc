# `make demo`: set up .venv if missing, run the offline demo pipeline (what `dvc repro` does, stages side by side), print its table.
# `make test`: set up .venv if missing, run the test suite.
# `make bench`: set up .venv if missing, print speed and memory figures.
# `make pipelines`: write each stage's code deps into dvc.yaml, then copy it into the configuration folders.
# `make cifar10-cpu`: the CPU-sized CIFAR-10 run, all five attacks, three seeds (about 3.7 hours on a 2-core Zen 4 in bf16, several times that without native bf16; needs ../shared).
VENV ?= .venv
export PATH := $(abspath $(VENV))/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export DVC_SITE_CACHE_DIR := $(abspath .dvc-site-cache)
# The demo's stages run side by side, one per core (at most 8), each on one thread (`train.threads: 1`).
JOBS ?= $(shell python3 -c 'import os; print(min(8, os.cpu_count() or 1))')

.PHONY: demo test bench cifar10-cpu pipelines

$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --disable-pip-version-check -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	cd demo && python -m backdoorlab.worker python -m backdoorlab.parallel . --jobs $(JOBS) --repro
	@cat demo/metrics/results.md

test: $(VENV)/.installed
	python -m pytest -q

cifar10-cpu: $(VENV)/.installed
	cd cifar10-cpu && python -m backdoorlab.worker dvc repro
	@cat cifar10-cpu/metrics/results.md

bench: $(VENV)/.installed
	python -m benchmarks.bench

pipelines: $(VENV)/.installed
	python -m backdoorlab.codedeps --write dvc.yaml
	for config in demo cifar10-cpu; do cp dvc.yaml $$config/dvc.yaml; done
