"""``python -m recast_bench.protocol list --backbone B`` / ``show ID --backbone B``: the cards from the shell."""

from __future__ import annotations

import argparse
import sys

from recast_bench.protocol.cards import bench_rows, by_id, family_of


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m recast_bench.protocol",
        description="The protocol cards from the shell: "
        "the rows make bench runs for a backbone, or one row's values with their sources.",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    lp = sub.add_parser("list", help="bench entries of a backbone's paper table, in order, extras last")
    lp.add_argument("--backbone", required=True)
    sp = sub.add_parser("show", help="one card's values and sources")
    sp.add_argument("id")
    sp.add_argument("--backbone", required=True)
    args = p.parse_args(argv)
    if args.cmd == "list":
        print(" ".join(c.id for c in bench_rows(args.backbone)))
        return 0
    card = by_id(args.id, family_of(args.backbone))
    if card is None:
        print(f"no card {args.id!r} for {args.backbone}", file=sys.stderr)
        return 2
    print(f"{card.id}: {card.paper_table} '{card.label}' ({card.method}, variant {card.variant})")
    for key, v in card.values.items():
        flag = f"  [ours: {v.flag}]" if v.flagged else ""
        print(f"  {key} = {v.value!r}  ({v.source}: {v.ref}){flag}")
    print(f"  per-task count {card.count}, paper {card.paper_params}: {card.verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
