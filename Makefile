# icl: `make demo` runs the smoke study end to end, `make test` runs the tests (CI: .ci/run).
SHELL := /bin/bash
VENV ?= .venv
PY ?= $(VENV)/bin/python
# torch is installed only when none is importable, so an existing (e.g. CUDA) build is kept.
# Here the pinned CPU wheel comes from the local wheel index; on a GPU box use TORCH_SPEC=torch.
TORCH_SPEC ?= torch==2.13.0
# The versions the tests passed with (pip -c): what makes identical configs give identical results. CONSTRAINTS= drops it.
CONSTRAINTS ?= constraints.txt
ARGS ?=
comma := ,
empty :=
space := $(empty) $(empty)
# make study: the scale (cpu | paper: configs/experiment/seed_study/<STUDY>_cell.yaml), where its jobs run, its timing CSV.
STUDY ?= cpu
STUDY_DIR = multirun/seed_study/$(STUDY)
BENCH_CSV = $(if $(filter paper,$(STUDY)),bench_paper.csv,bench.csv)

.DEFAULT_GOAL := help
.PHONY: help install demo study study-tune study-tuning status test test-fast lint figures bench-attn bench bench-overhead bench-eval bench-aggregate quant-sweep quant-figures clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# One stamp per interpreter, so `make install PY=python` and the default .venv do not mistake each other.
STAMP := .make/installed$(subst /,_,$(abspath $(PY)))

install: $(STAMP) ## create .venv (if PY is not given), install torch if missing, then icl[dev] at the versions of constraints.txt

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@command -v $(PY) >/dev/null || python3 -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[dev]" $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
	@mkdir -p $(@D) && touch $@

demo: install ## train + evaluate the smoke study (outputs/demo), then draw figures/
	$(PY) -m icl.train experiment=smoke hydra.run.dir=outputs/demo $(ARGS)
	$(MAKE) figures PY=$(PY) ARGS=

TUNE ?= tune_shared
SHARED ?= true
study-tune: install ## train a study tuning sweep job by job, skipping dominated recipes; a rerun continues (TUNE=tune_shared SHARED=true)
	$(PY) -m icl.lab.tuning_drive experiment=seed_study/$(TUNE) shared=$(SHARED) $(ARGS)

TUNE_DIR = multirun/seed_study
study-tuning: ## summarise the study's tuning sweeps into docs/study/tuning/{shared,tuned} (committed; the report shows them)
	@# each call exits 2 while no recipe is complete ("nothing chosen yet") but writes its tables all the same; 1 is an error
	$(PY) -m icl.lab.tuning "sweeps=[$(TUNE_DIR)/tune_shared]" rank=worst shared=true out=docs/study/tuning/shared || test $$? -eq 2
	$(PY) -m icl.lab.tuning "sweeps=[$(TUNE_DIR)/tune_shared,$(TUNE_DIR)/tune_former_softmax,$(TUNE_DIR)/tune_softmax_seeds]" rank=worst out=docs/study/tuning/tuned || test $$? -eq 2

study: install ## the seed study v2: train the cells missing or stale in docs/study/cells, time, write docs/RESULTS_STUDY.md (STUDY=cpu|paper)
	$(PY) -m icl.lab.study.make $(if $(filter paper,$(STUDY)),study=paper,) $(ARGS)
	@test -f docs/study/$(BENCH_CSV) || { $(PY) -m icl.bench bench=$(if $(filter paper,$(STUDY)),study_paper,study) out_dir=$(STUDY_DIR)/bench && cp $(STUDY_DIR)/bench/bench.csv docs/study/$(BENCH_CSV); }
	$(PY) -m icl.study $(if $(filter paper,$(STUDY)),study=paper,)

SWEEP ?= multirun
status: ## each job under SWEEP (a sweep folder): done/running/failed/interrupted, steps, ETA (ARGS=rerun=true reruns the failed)
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found: run 'make install' first"; exit 1; }
	$(PY) -m icl.run.status sweep=$(SWEEP) $(ARGS)

# One pytest worker per core, a test file per worker at a time (module fixtures train once), each worker one torch
# thread (tests/conftest.py): most slow tests wait on a CLI subprocess's start-up, so 2 workers on 2 cores roughly
# halve the wall time. ARGS=-n0 runs them in one process.
XDIST = -n auto --dist loadfile
test: install ## run the whole test suite (what CI runs, after lint), one worker per core
	$(PY) -m pytest $(XDIST) $(ARGS)

test-fast: install ## the tests without the slow end-to-end ones (CLI, launchers, DDP)
	$(PY) -m pytest $(XDIST) -m "not slow" $(ARGS)

lint: install ## ruff check (configured in pyproject.toml)
	$(PY) -m ruff check .

figures: ## aggregate every eval.csv under outputs/ and multirun/ into figures/
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found: run 'make install' first"; exit 1; }
	$(PY) -m icl.figures $(ARGS)

bench-attn: install ## time every attention kernel alone at T = 128…8192, then every sequence mixer + its cost per prompt (outputs/bench_attn/)
	$(PY) -m icl.bench.attention $(ARGS)
	$(PY) -m icl.bench.mixers

bench: install ## latency per attention x quant x k + ours vs the GPT2Model reference (outputs/bench/; ARGS=bench=quick: minutes)
	$(PY) -m icl.bench $(ARGS)

bench-overhead: install ## the smoke job's step vs a bare loop + tiny/standard train step vs GPT2Model, each target met or not (~1 min)
	$(PY) -m icl.bench bench=overhead threads=2 $(ARGS)

quant-sweep: install ## post-training width sweeps + one-block sensitivity on trained jobs (RUNS=folders; outputs/quant_sweep/)
	$(PY) -m icl.bench.quant_sweep "inputs=[$(subst $(space),$(comma),$(or $(RUNS),outputs multirun))]" $(ARGS)

quant-figures: ## redraw docs/quantization's breaking-point and sensitivity figures from its committed sweep CSVs
	$(MAKE) figures PY=$(PY) ARGS="inputs=[docs/quantization] out_dir=docs/quantization formats=[png]"

bench-eval: install ## old per-prompt loops vs batched baselines, interleaved (docs/baselines.md; ARGS=grid=true adds the sparse grid)
	$(PY) -m icl.bench.eval $(ARGS)

bench-aggregate: install ## make figures over 192 synthetic job folders (docs/baselines.md)
	$(PY) -m icl.bench.aggregate $(ARGS)

clean: ## remove generated figures/ (outputs/ and multirun/ hold results: delete them by hand)
	rm -rf figures
