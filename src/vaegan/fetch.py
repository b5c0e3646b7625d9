"""The `fetch` stage: put a dataset's four IDX `.gz` files into `<raw_dir>/<dataset>/` with a
SOURCE.json saying where they came from (`data.source` picks the origin; the core, with what each
source does, is `vaegan.data.download`), and say loudly when the data is the shipped sample.
"""

from __future__ import annotations

import argparse
import logging
import sys

from vaegan.config import Config
from vaegan.data.datasets import SAMPLE_NOTE
from vaegan.data.download import SOURCE_FILE, FetchResult, fetch_dataset

log = logging.getLogger(__name__)


def _warn_sample(result: FetchResult) -> None:
    """Say loudly on stderr that the data is the shipped sample, not the full dataset."""
    rule = "!" * 78
    lines = [rule, f"{SAMPLE_NOTE}."]
    if result.kept_existing:
        lines.append(f"{result.directory} already held the sample from an earlier fetch; it was kept.")
    if "fallback_reason" in result.record:
        lines.append(f"data.source=auto fell back to it because {result.record['fallback_reason']}.")
    if result.record.get("source") != "sample":
        lines.append("Run `vaegan fetch --set data.source=download` when online for the official files.")
    lines += [f'Recorded in {result.directory / SOURCE_FILE} ("sample": true).', rule]
    for line in lines:
        print(f"vaegan fetch: WARNING: {line}", file=sys.stderr)


def run(config: Config, args: argparse.Namespace) -> int:
    """`vaegan fetch`: fill data/raw/<dataset>/ according to data.source."""
    data = config.data
    result = fetch_dataset(
        dataset=data.dataset,
        source=data.source,
        raw_dir=data.raw_dir,
        mirrors=data.mirrors,
        timeout_s=data.download_timeout_s,
        progress=sys.stderr.isatty(),
    )
    verb = "kept the valid files already in" if result.kept_existing else "wrote"
    counts = ", ".join(f"{name}: {entry['records']}" for name, entry in result.record["files"].items())
    log.info("%s %s (%s; %s)", verb, result.directory, result.record["kind"], counts)
    if result.sample:
        _warn_sample(result)
    return 0
