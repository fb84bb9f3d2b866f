# icl: `make demo` runs the smoke study end to end, `make test` runs the tests (CI: .ci/run).
SHELL := /bin/bash
VENV ?= .venv
PY ?= $(VENV)/bin/python
# torch is installed only when none is importable, so an existing (e.g. CUDA) build is kept.
# Here the pinned CPU wheel comes from the local wheel index; on a GPU box use TORCH_SPEC=torch.
TORCH_SPEC ?= torch==2.13.0
ARGS ?=
# make study: the scale (cpu | paper: configs/experiment/seed_study/<STUDY>_*.yaml) and where it writes.
STUDY ?= cpu
STUDY_DIR = multirun/seed_study/$(STUDY)

.DEFAULT_GOAL := help
.PHONY: help install demo study test test-fast lint figures bench-attn bench bench-eval bench-aggregate clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# One stamp per interpreter, so `make install PY=python` and the default .venv do not mistake each other.
STAMP := .make/installed$(subst /,_,$(abspath $(PY)))

install: $(STAMP) ## create .venv (if PY is not given), install torch if missing, then icl[dev]

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || python3 -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[dev]"
	@mkdir -p $(@D) && touch $@

demo: install ## train + evaluate the smoke study (outputs/demo), then draw figures/
	$(PY) -m icl.train experiment=smoke hydra.run.dir=outputs/demo $(ARGS)
	$(MAKE) figures PY=$(PY) ARGS=

study: install ## the seed study (issue 15): both grids, the timing, docs/RESULTS.md (STUDY=cpu|paper; reruns skip done jobs)
	@mkdir -p $(STUDY_DIR) && echo "start $$(date +%s)" >> $(STUDY_DIR)/timing.log
	$(PY) -m icl.train experiment=seed_study/$(STUDY)_core $(ARGS)
	$(PY) -m icl.train experiment=seed_study/$(STUDY)_overview $(ARGS)
	@test -f $(STUDY_DIR)/bench/bench.csv || $(PY) -m icl.bench bench=$(if $(filter paper,$(STUDY)),study_paper,study) out_dir=$(STUDY_DIR)/bench
	@echo "end $$(date +%s)" >> $(STUDY_DIR)/timing.log
	$(PY) -m icl.study scale=$(STUDY) $(if $(filter paper,$(STUDY)),study=paper,)

test: install ## run the whole test suite (what CI runs, after lint)
	$(PY) -m pytest $(ARGS)

test-fast: install ## the tests without the slow end-to-end ones (CLI, launchers, DDP)
	$(PY) -m pytest -m "not slow" $(ARGS)

lint: install ## ruff check (configured in pyproject.toml)
	$(PY) -m ruff check .

figures: ## aggregate every eval.csv under outputs/ and multirun/ into figures/
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found: run 'make install' first"; exit 1; }
	$(PY) -m icl.figures $(ARGS)

bench-attn: install ## time every attention kernel alone at T = 128…8192, then every sequence mixer (outputs/bench_attn/)
	$(PY) -m icl.bench.attention $(ARGS)
	$(PY) -m icl.bench.mixers

bench: install ## latency per attention x quant x k + ours vs the GPT2Model reference (outputs/bench/; ARGS=bench=quick: minutes)
	$(PY) -m icl.bench $(ARGS)

bench-eval: install ## old per-prompt loops vs batched baselines, interleaved (docs/baselines.md; ARGS="--grid" adds the sparse grid)
	$(PY) -m icl.bench.eval $(ARGS)

bench-aggregate: install ## make figures over 192 synthetic job folders (docs/baselines.md)
	$(PY) -m icl.bench.aggregate $(ARGS)

clean: ## remove generated figures/ (outputs/ and multirun/ hold results: delete them by hand)
	rm -rf figures
