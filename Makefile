# lottery — layer-pruning lottery tickets. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 5000
PYTEST_ARGS ?=
# make test runs the test files side by side, one pytest-xdist worker per core (at most 4); each file
# stays on one worker, in order, so module fixtures (a dense network trained once) are built once.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); echo $$(( n < 4 ? n : 4 )))
# paths.root: every store, cache, database, table and log lives below it
ROOT ?= .lottery
STORE_URI ?= sqlite:///$(abspath $(ROOT))/mlflow.db
# Paper tables: make table2 [PROFILE=paper|quick|smoke] [DATA=...] [DATA_ROOT=...] [MODEL=resnet18] [SEEDS=3] [XI=0|std] [DRY_RUN=1]
# SEEDS=auto [EFFECT=1] [MAX_SEEDS=10]: a 3-seed pilot per cell, then the seeds its 95 % interval needs to be
# within ±EFFECT pp, at most MAX_SEEDS (docs/design.md §8.2.1)
PROFILE ?= paper
# DATA: the data config; unset, a sweep runs on its own for the profile, else synthetic (smoke) or cifar10
DATA ?=
DATA_OR_DEFAULT = $(or $(DATA),$(if $(filter smoke,$(PROFILE)),synthetic,cifar10))
DATA_ROOT ?=
MODEL ?=
SEEDS ?= 1
EFFECT ?= 1
MAX_SEEDS ?= 10
XI ?= 0
OVERRIDES ?=
JOBS ?= 1
LAUNCHER ?=
DRY_RUN ?=
TRIALS ?= 20
AMP_SEEDS ?= 3
BACKEND_URI ?=
PG_PORT ?= 5432
# One target per sweep file: the paper's tables and figure (sweeps/table*.yaml, figure*.yaml), and
# the questions beyond it (every other sweep file).
SWEEP_FILES := $(basename $(notdir $(wildcard sweeps/*.yaml)))
TABLES := $(filter table% figure%,$(SWEEP_FILES))
BEYOND := $(filter-out $(TABLES),$(SWEEP_FILES))

.PHONY: help install lint test demo ui bench bench-amp bench-gpu gpu-check search server postgres clean clean-store tables report $(TABLES) $(BEYOND)

help:  ## list the targets
	@grep -hE '^[a-z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'
	@echo "  $(TABLES): run a paper table's sweep, then print it beside the paper"
	@echo "  $(BEYOND): beyond the paper: run the sweep, then print its table"

# The exact versions a reproduction ran with (constraints.txt); FLOAT=1 takes the newest of everything.
FLOAT ?=
CONSTRAINTS := $(if $(FLOAT),,constraints.txt)

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[dev]'
	echo "$(if $(CONSTRAINTS),constraints.txt (exact versions; sha256 $$(sha256sum constraints.txt | cut -c1-12)),the newest versions (FLOAT=1))" \
		> $(VENV)/lottery-install.txt
	touch $@

install: $(VENV)/.installed  ## create .venv and install lottery and its dev tools at the versions of constraints.txt (FLOAT=1: newest)

lint: install  ## the architecture's layers (import-linter contracts in pyproject.toml): no upward import, no cycle
	@$(VENV)/bin/lint-imports --no-cache

test: lint  ## check the layers, then run the test suite (no tests collected counts as a failure)
	@$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; failing on purpose"; exit 1; fi; \
	exit $$rc

demo: install  ## one GraSP ticket at init (2 blocks removed) and its dense ResNet-20 on real digits (scikit-learn's), under a minute
	$(PY) -m lottery profile=smoke data=digits model=resnet20 mode=init criterion=grasp density=2 paths.root=$(ROOT) \
		train.channels_last=true train.compile=false  # the layout pinned: a fresh store's timing never changes the line

ui: install  ## browse the local MLflow store on http://127.0.0.1:5000 (PORT=...)
	mkdir -p $(ROOT)
	@echo "open http://127.0.0.1:$(PORT)/#/experiments?workflowType=machine_learning (MLflow 3: the 'Model training' view)"
	$(VENV)/bin/mlflow ui --backend-store-uri $(STORE_URI) --host 127.0.0.1 --port $(PORT)

# A failed trial never hides the table: it is built from what finished, then the sweep's status is returned.
# DRY_RUN=1 lists every trial as finished / failed / missing with the estimated time of the rest, and runs nothing.
$(TABLES) $(BEYOND): install
	$(PY) -m lottery sweep $@ --profile $(PROFILE) $(if $(DATA),--data $(DATA)) $(if $(DATA_ROOT),--data-root $(DATA_ROOT)) \
		$(if $(MODEL),--model $(MODEL)) --seeds $(SEEDS) --effect $(EFFECT) --max-seeds $(MAX_SEEDS) --jobs $(JOBS) \
		$(if $(LAUNCHER),--launcher $(LAUNCHER)) $(if $(DRY_RUN),--dry-run) paths.root=$(ROOT) $(OVERRIDES); \
	status=$$?; $(if $(DRY_RUN),exit $$status;) \
	$(PY) -m lottery table $@ --profile $(PROFILE) $(if $(DATA),--data $(DATA)) $(if $(DATA_ROOT),--data-root $(DATA_ROOT)) \
		$(if $(MODEL),--model $(MODEL)) --root $(ROOT) --xi $(XI) --effect $(EFFECT) --max-seeds $(MAX_SEEDS) \
		$(OVERRIDES) && exit $$status

tables: $(TABLES)  ## every table, Figure 3 and the plots

report: install  ## one page (HTML + md) of every paper claim with our verdict, every table and plot (PROFILE=... DATA=...)
	$(PY) -m lottery report --profile $(PROFILE) --root $(ROOT) $(if $(MODEL),--model $(MODEL)) $(if $(DATA),--data $(DATA))

search: install  ## Optuna search of the accuracy-vs-FLOPs front (TRIALS=N; resumes when re-run)
	$(PY) -m lottery search profile=$(PROFILE) data=$(DATA_OR_DEFAULT) $(if $(DATA_ROOT),data.root=$(DATA_ROOT)) \
		search.trials=$(TRIALS) paths.root=$(ROOT) $(OVERRIDES)

server: install  ## MLflow tracking server on 127.0.0.1:$(PORT), its backend checked first (BACKEND_URI=postgresql://..., HOST, WORKERS, ALLOWED_HOSTS)
	@$(PY) -m lottery server --root $(ROOT) $(if $(BACKEND_URI),--backend-uri '$(BACKEND_URI)') --host $(or $(HOST),127.0.0.1) \
		--port $(PORT) $(if $(WORKERS),--workers $(WORKERS)) $(if $(ALLOWED_HOSTS),--allowed-hosts '$(ALLOWED_HOSTS)')

postgres: install  ## a local PostgreSQL for `make server` to try it (ROOT/postgres, 127.0.0.1:$(PG_PORT)); STOP=1 stops it
	@$(PY) -m lottery postgres --dir $(ROOT)/postgres --port $(PG_PORT) $(if $(STOP),--stop)

bench: install  ## trainer (default amp and fp32) vs a plain fp32 loop, FLOP/s vs peak, criteria, tracking (JSON=PATH)
	$(PY) benchmarks/bench.py --root $(ROOT) $(if $(JSON),--json $(JSON)) $(BENCH_ARGS)

bench-amp: install  ## accuracy and s/epoch of the quick dense network, amp=off vs amp=auto, AMP_SEEDS (3) each
	$(PY) benchmarks/amp.py --seeds $(AMP_SEEDS) $(if $(JSON),--json $(JSON)) \
		data=$(DATA_OR_DEFAULT) $(if $(DATA_ROOT),data.root=$(DATA_ROOT)) paths.root=$(ROOT) $(OVERRIDES)

bench-gpu: install  ## one GPU: the trainer's img/s eager/compiled/CUDA graph x fp32/bf16, 1/2/4 trials at once, tables' GPU-hours
	$(PY) benchmarks/gpu.py $(if $(JSON),--json $(JSON)) $(BENCH_ARGS)

gpu-check: install  ## every GPU check in one run (<= 9 min on one GPU, budgets with their compiles; DRY_RUN=1 prints the plan): cuda tests, rates, determinism, memory, Table 2's GPU-minutes on its settled path
	$(PY) benchmarks/gpu_check.py --json $(or $(JSON),$(ROOT)/gpu-check.json) $(if $(DRY_RUN),--dry-run)

clean:  ## delete caches, tables, reports and logs under ROOT (keeps the dense store and the MLflow runs)
	rm -rf $(ROOT)/cache $(ROOT)/tables $(ROOT)/report $(ROOT)/hydra $(ROOT)/codecarbon $(ROOT)/search

clean-store:  ## delete the dense-run store under ROOT (days of GPU training), after saying what it holds
	@if [ -d $(ROOT)/store ]; then \
		echo "deleting $(ROOT)/store: $$(ls $(ROOT)/store/dense 2>/dev/null | grep -cv '\.') dense network(s), $$(du -sh $(ROOT)/store | cut -f1)"; \
		rm -rf $(ROOT)/store; \
	else echo "no store at $(ROOT)/store"; fi
