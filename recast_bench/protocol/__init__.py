"""The paper's protocol as data: one card per row of Tables 1 and 2 and per figure setting (see ``cards.py``).

``python -m recast_bench.protocol list --backbone B`` prints the bench rows of B's family (``make bench`` runs
them); ``show`` prints one row's values with their sources.
"""

from recast_bench.protocol.cards import Card, Value, all_cards, bench_rows, find, load

__all__ = ["Card", "Value", "all_cards", "bench_rows", "find", "load"]
