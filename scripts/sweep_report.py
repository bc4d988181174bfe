"""Re-create a sweep's report from its directory: python scripts/sweep_report.py logs/train/multiruns/<time>"""

import argparse
import sys
from pathlib import Path

from aelab.report.plots import FIGURE_FORMATS, FigureFiles
from aelab.report.sweep import write_report
from aelab.runs import job_dirs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--figure-format", choices=FIGURE_FORMATS, default="png", help="as figure_format= (png)")
    parser.add_argument("--figure-dpi", type=int, default=100, help="as figure_dpi= (100)")
    args = parser.parse_args()
    if not job_dirs(args.sweep_dir):
        print(f"aelab: error: {args.sweep_dir} holds no sweep jobs (no */.hydra/config.yaml)", file=sys.stderr)
        return 2
    rows = write_report(args.sweep_dir, FigureFiles(args.figure_format, args.figure_dpi))
    print((args.sweep_dir / "summary.md").read_text())
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
