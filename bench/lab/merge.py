"""`python -m bench.lab.merge A.json B.json ... [--out DIR]`: one results file from bench parts run apart.

`bench/lab/gpu.sh` runs the bench in time-boxed parts (a part cut short loses only itself). This merges
their sections into one `<device>.json` + `.md`: the first part's header, every section present,
and the training configs of all parts, joined per (preset, batch). Each ratio stays the one its
part measured against its own textbook run; the textbook shown is the first part's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench.report import render
from bench.run import REPO_ROOT, SECTIONS, check_targets
from vaegan.artifacts.atomic_io import write_json, write_text


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The merged results; every part must come from the same device."""
    devices = {part["device"] for part in parts}
    if len(devices) != 1:
        raise ValueError(f"parts from different devices: {sorted(devices)}")
    merged = {key: value for key, value in parts[0].items() if key not in (*SECTIONS, "targets")}
    configs: dict[tuple[str, int], dict[str, Any]] = {}
    for part in parts:
        for section in SECTIONS:
            if section in part and section != "training":
                merged[section] = part[section]
        training = part.get("training")
        if training is None:
            continue
        merged.setdefault("training", {**training, "configs": []})
        for config in training["configs"]:
            key = (config["preset"], config["batch"])
            if key not in configs:
                configs[key] = {**config, "results": dict(config["results"]), "ratio": dict(config["ratio"])}
                continue
            for impl, result in config["results"].items():
                configs[key]["results"].setdefault(impl, result)
            for impl, value in config["ratio"].items():
                configs[key]["ratio"].setdefault(impl, value)
    if "training" in merged:
        merged["training"]["configs"] = list(configs.values())
    merged["wall_s"] = round(sum(part.get("wall_s", 0.0) for part in parts), 1)
    merged["targets"] = check_targets(merged, merged["device_type"])
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="+", type=Path, help="bench results JSON files of one device")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results", help="results directory")
    args = parser.parse_args(argv)
    try:
        merged = merge([json.loads(path.read_text(encoding="utf-8")) for path in args.parts])
    except (OSError, ValueError, KeyError) as exc:
        print(f"bench.lab.merge: {exc}", file=sys.stderr)
        return 2
    path = args.out / f"{merged['device']}.json"
    write_json(path, merged)
    table = render(merged)
    write_text(path.with_suffix(".md"), table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
