# make bench / make reproduce: every method of a paper table as make targets, then `recast-bench report`.
# Included by the top-level Makefile, which defines VENV, PY, BIN and the install stamp $(VENV)/.installed.
#
#   make bench BACKBONE=resnet34|vit_small [SEEDS="42 1998 3142592"] [STREAM=six] [EXTRA="hydra overrides"]
#   make bench BACKBONE=vit_small STREAM=synthetic TINY=1      # end-to-end CPU check (random weights, tiny stream)
#   make bench BACKBONE=vit_small STREAM=my/stream.yaml         # your own tasks (README "Your own tasks")
#   make reproduce                                              # both backbones, the paper's three seeds
#
# Each run writes bench/<backbone>-<stream>/<method>-s<seed>/results.json, a make target that is re-run only when
# missing, incomplete (resumed from its last task) or stale (its command line or one of its conf/ files changed;
# then it restarts from scratch). A method entry NAME@VARIANT runs NAME with method.<adapter>.variant=VARIANT
# (RoSA "sparse_mlp" / "full", the paper's two RoSA rows; recast@svd, adaptformer@authors: our extra rows), exactly
# what `recast-bench run --method NAME@VARIANT` runs.
# Methods not registered in this checkout are skipped.

BACKBONE ?= vit_small
STREAM ?= six
SEEDS ?= 42
EXTRA ?=
TINY ?=
BENCH_ROOT ?= bench
# Each run takes a free GPU slot (python -m recast_bench.slot): RUNS_PER_GPU concurrent runs per visible GPU,
# CUDA_VISIBLE_DEVICES set per run; without a GPU the launcher just runs the command. By default RUNS_PER_GPU is
# chosen from measured memory (`python -m recast_bench.slot --choose`: the peak GPU memory of gpu-check.json's cases
# for the backbone, the card's memory with a margin, two loader workers per run, /dev/shm; 2 where no gpu-check.json
# exists, 1 without a GPU), and make starts BENCH_JOBS = GPUs x RUNS_PER_GPU runs at once unless you give -j.
# RUNS_PER_GPU=0 turns slots off (e.g. EXTRA="trainer.devices=4 trainer.strategy=ddp": each run uses every GPU).
BENCH_SLOTS = $(shell $(PYTHON) -m recast_bench.slot --choose --backbone $(BACKBONE) $(if $(RUNS_PER_GPU),--per-gpu $(RUNS_PER_GPU)))
ifneq ($(filter bench reproduce,$(MAKECMDGOALS)),)
BENCH_SLOTS := $(BENCH_SLOTS)
RUNS_PER_GPU := $(or $(RUNS_PER_GPU),$(word 1,$(BENCH_SLOTS)),1)
BENCH_JOBS ?= $(or $(word 2,$(BENCH_SLOTS)),1)
endif
RUNS_PER_GPU ?= 1
# STREAM=PATH.yaml: a stream file of your own tasks (no spaces in the path: make splits on them); its runs go to
# bench/<backbone>-<file name without .yaml>/, and `recast-bench cost` (built-in streams only) is skipped.
BENCH_STREAM_FILE = $(filter %.yaml %.yml,$(STREAM))
BENCH_COST ?= $(if $(BENCH_STREAM_FILE),0,1)
BENCH_JOBS ?= 1
PAPER_SEEDS := 42 1998 3142592
BENCH_DIR = $(BENCH_ROOT)/$(BACKBONE)-$(if $(BENCH_STREAM_FILE),$(basename $(notdir $(STREAM))),$(STREAM))
BENCH_TOP := $(firstword $(MAKEFILE_LIST))

# The rows of BACKBONE's paper table (Table 1 for ResNets, Table 2 for ViTs) in the paper's order, then our extra
# named rows (e.g. recast@svd), read from the protocol cards (recast_bench/protocol/cards/); each run gets its card's
# values by default (recast-bench run applies them beneath every override).
BENCH_METHODS ?= $(shell $(PY) -m recast_bench.protocol list --backbone $(BACKBONE))

# TINY=1: random-init backbone, 1 epoch, 2 tiny tasks, no W&B -- a plumbing check, not a result.
BENCH_TINY_EXTRA := ++backbone.allow_random_init=true trainer=tiny trainer.epochs=1 trainer.batch_size=8 \
	++stream.num_tasks=2 '++stream.classes_per_task=[3,4]' ++stream.train_per_class=4 ++stream.val_per_class=2 \
	++stream.test_per_class=4 logger=none
BENCH_EXTRA = $(EXTRA) $(if $(TINY),$(BENCH_TINY_EXTRA))

# NAME@VARIANT is split by recast_bench.protocol.rows (the one parser): one word ENTRY:NAME:OVERRIDE:PART,PART per
# entry, read once per make; bench_method is NAME, bench_variant the override that selects VARIANT (or nothing).
bench_word = $(subst :, ,$(filter $(1):%,$(BENCH_ROW_WORDS)))
bench_method = $(word 2,$(call bench_word,$(1)))
bench_variant = $(filter-out -,$(word 3,$(call bench_word,$(1))))
bench_parts = $(subst $(comma), ,$(word 4,$(call bench_word,$(1))))
comma := ,
bench_confs = $(wildcard conf/config.yaml conf/backbone/$(BACKBONE).yaml conf/stream/$(STREAM).yaml $(BENCH_STREAM_FILE) \
	conf/trainer/default.yaml recast_bench/protocol/cards/table1.yaml recast_bench/protocol/cards/table2.yaml $(foreach p,$(call bench_parts,$(1)),conf/method/$(p).yaml))
bench_incomplete = $(shell f=$(1); test -f "$$f" && ! grep -q '"status": "complete"' "$$f" && echo FORCE)

.PHONY: bench reproduce _bench-run _bench-report FORCE
FORCE:

bench: $(VENV)/.installed ## run every method of BACKBONE's paper table over STREAM for SEEDS, then report
	@registered=" $$($(BIN)/recast-bench list | sed -n 's/^methods: *//p') "; want=""; \
	for w in $$($(PY) -m recast_bench.protocol.rows $(BENCH_METHODS)); do \
	  m=$${w%%:*}; n=$${w#*:}; n=$${n%%:*}; \
	  case "$$registered" in *" $$n "*) want="$$want $$m";; *) echo "bench: skipping $$m (not registered)";; esac; \
	done; \
	[ "$(BENCH_COST)" = 0 ] || $(BIN)/recast-bench cost --backbone $(BACKBONE) --stream $(STREAM) --seeds "$(SEEDS)" \
	  --runs-per-gpu $(RUNS_PER_GPU) --methods $$want -- $(BENCH_EXTRA) || echo "bench: no cost estimate (see above)"; \
	$(PYTHON) -m recast_bench.slot --choose --explain --backbone $(BACKBONE) --per-gpu $(RUNS_PER_GPU) >/dev/null; \
	$(MAKE) -k --no-print-directory -f $(BENCH_TOP) $(if $(filter -j%,$(MAKEFLAGS)),,-j$(BENCH_JOBS)) _bench-run \
	  BENCH_RUN_METHODS="$$want" RUNS_PER_GPU=$(RUNS_PER_GPU); rc=$$?; \
	[ $$rc -eq 0 ] || echo "bench: some runs failed (see above); reporting the completed ones"; \
	$(MAKE) --no-print-directory -f $(BENCH_TOP) _bench-report BENCH_RUN_METHODS="$$want" && exit $$rc

reproduce: $(VENV)/.installed ## the paper's Tables 1 and 2: both backbones, six datasets, seeds 42 1998 3142592
	-$(BIN)/recast-bench cost --backbone resnet34 --stream six --seeds "$(PAPER_SEEDS)" -- $(EXTRA)
	-$(BIN)/recast-bench cost --backbone vit_small --stream six --seeds "$(PAPER_SEEDS)" -- $(EXTRA)
	$(MAKE) --no-print-directory -f $(BENCH_TOP) bench BACKBONE=resnet34 STREAM=six SEEDS="$(PAPER_SEEDS)" BENCH_COST=0
	$(MAKE) --no-print-directory -f $(BENCH_TOP) bench BACKBONE=vit_small STREAM=six SEEDS="$(PAPER_SEEDS)" BENCH_COST=0

ifdef BENCH_RUN_METHODS
BENCH_ROW_WORDS := $(shell $(PY) -m recast_bench.protocol.rows $(BENCH_RUN_METHODS))
BENCH_PAIRS := $(foreach m,$(BENCH_RUN_METHODS),$(foreach s,$(SEEDS),$(m)-s$(s)))
BENCH_RESULTS := $(foreach p,$(BENCH_PAIRS),$(BENCH_DIR)/$(p)/results.json)

# $(1): method entry (NAME or NAME@VARIANT), $(2): seed.
define BENCH_RULE
$(BENCH_DIR)/.stamps/$(1)-s$(2).args: FORCE
	@mkdir -p $$(@D); a='run --method $(call bench_method,$(1)) --backbone $(BACKBONE) --stream $(STREAM) --seed $(2) $(call bench_variant,$(1)) $(subst ','"'"',$(BENCH_EXTRA))'; \
	  [ -f $$@ ] && [ "$$$$(cat $$@)" = "$$$$a" ] || printf '%s\n' "$$$$a" > $$@

$(BENCH_DIR)/$(1)-s$(2)/results.json: $(BENCH_DIR)/.stamps/$(1)-s$(2).args $(call bench_confs,$(1)) $(call bench_incomplete,$(BENCH_DIR)/$(1)-s$(2)/results.json)
	@$(PY) -m recast_bench.report.progress $(BENCH_DIR) --expect "$(BENCH_PAIRS)" --next $(1)-s$(2)
	@if [ -f $$@ ] && [ -n "$$(filter-out FORCE,$$?)" ]; then echo "bench: $(1) s$(2): settings changed, re-running"; rm -rf $$(@D); fi
	$(PY) -m recast_bench.slot --per-gpu $(RUNS_PER_GPU) -- $(BIN)/recast-bench run --method $(call bench_method,$(1)) --backbone $(BACKBONE) --stream $(STREAM) --seed $(2) --out $$(@D) $(call bench_variant,$(1)) $(BENCH_EXTRA)
	@touch $$@
endef
$(foreach m,$(BENCH_RUN_METHODS),$(foreach s,$(SEEDS),$(eval $(call BENCH_RULE,$(m),$(s)))))

_bench-run: $(BENCH_RESULTS)

# The summary grid and the report over the runs that completed (a failed method does not hide the others).
_bench-report:
	@$(PY) -m recast_bench.report.progress $(BENCH_DIR) --expect "$(BENCH_PAIRS)" --grid
	$(BIN)/recast-bench report $(patsubst %/results.json,%,$(wildcard $(BENCH_RESULTS))) --out $(BENCH_DIR)/report
endif
