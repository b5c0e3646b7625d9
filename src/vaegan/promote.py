"""`vaegan promote`: move `champion` to the challenger when the promotion gate passes (the core is
`vaegan.registry.promotion.promote_challenger`)."""

from __future__ import annotations

import argparse

from vaegan.config import Config
from vaegan.registry.promotion import promote_challenger


def run(config: Config, args: argparse.Namespace) -> int:
    """`vaegan promote`: print the gate's decision and reasons; exit 0 whether or not it promoted."""
    decision = promote_challenger(config=config, dry_run=args.dry_run)
    print(decision.summary())
    return 0
