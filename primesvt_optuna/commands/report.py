"""`primesvt report STORAGE`: a comparison's table and figures, regenerated from storage alone."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Read the studies of a policy comparison (named <name>/<policy>/seed<k>, as `primesvt compare`
writes them) from STORAGE and write, without re-running anything: comparison.csv (numbers),
comparison.md (median and range over seeds, 95% bootstrap intervals), runs.csv (one row per
study) and the figures pareto, progress, layer_rates and robustness as PNG and SVG.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report", help="table and figures of a comparison, from its storage", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("storage", metavar="STORAGE", help="storage URL or file (sqlite:///runs/compare.db, a .log journal, ...)")
    p.add_argument("--prefix", metavar="NAME", default=None,
                   help="comparison name (the <name> of <name>/<policy>/seed<k>); needed when the storage holds several")
    p.add_argument("--output", "-o", metavar="DIR", default=None, help="output folder (default: runs/report-<name>)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..reporting import build_report, load_studies
    from . import output_folder

    prefix = args.prefix or load_studies(args.storage)[0].name
    outdir = output_folder(args.output or f"runs/report-{prefix}")
    report = build_report(args.storage, outdir, prefix)
    print(report.display.to_string(index=False))
    print(f"\nwrote {len(report.files)} files to {outdir}/")
    return 0
