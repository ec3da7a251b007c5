"""Turn runs into the paper's evidence: Tables 1, 2, 4, 5, 6 and Figures 3-8 beside the paper's numbers.

``recast-bench report`` (:mod:`recast_bench.report.cli`) loads ``results.json`` / ``report.json`` / ``perf.json``
(:mod:`.collect`), builds the tables (:mod:`.tables`) and figures (:mod:`.figures`) with the paper's numbers from
``paper_numbers/*.json`` (:mod:`.paper`), and can push them to a W&B report run (:mod:`.wandb_push`).
"""
