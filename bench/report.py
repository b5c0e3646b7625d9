"""The bench's results as text: a markdown table per section, and the targets checked."""

from __future__ import annotations

from typing import Any


def _fig(figure: dict[str, Any] | None, scale: float = 1.0, digits: int = 1) -> str:
    """'median (min-max)' of a figure, or the skip reason."""
    if figure is None:
        return "-"
    if "skipped" in figure:
        return "skipped"
    med, lo, hi = (figure[k] * scale for k in ("median", "min", "max"))
    return f"{med:,.{digits}f} ({lo:,.{digits}f}-{hi:,.{digits}f})"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def training_table(section: dict[str, Any]) -> list[str]:
    rows = [
        "| preset | batch | implementation | images/s | 60k-image epoch (s) | peak RSS (MiB) "
        "| GPU max alloc (MiB) | vs textbook |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for config in section["configs"]:
        for impl, result in config["results"].items():
            if "skipped" in result:
                rows.append(
                    f"| {config['preset']} | {config['batch']} | {impl} | skipped: {result['skipped']} |"
                )
                continue
            gpu = result["gpu_max_allocated_mib"]
            rows.append(
                f"| {config['preset']} | {config['batch']} | {impl} | {_fig(result['images_per_s'])} "
                f"| {_fig(result['epoch_s'])} | {result['peak_rss_mib']:,.0f} "
                f"| {'-' if gpu is None else f'{gpu:,.0f}'} | {_ratio(config['ratio'].get(impl))} |"
            )
    return rows


def fid_table(section: dict[str, Any]) -> list[str]:
    rows = [
        f"| FID on {section['num_samples']:,} samples | seconds | FID value | project vs plain |",
        "| --- | --- | --- | --- |",
    ]
    for side in ("project", "plain"):
        result = section[side]
        if "skipped" in result:
            rows.append(f"| {side} | skipped: {result['skipped']} | | |")
            continue
        ratio = _ratio(section.get("speedup")) if side == "project" else ""
        seconds = _fig(result["seconds"], digits=2)
        rows.append(f"| {side} ({result['how']}) | {seconds} | {result['fid']:.4f} | {ratio} |")
    return rows


def inference_table(section: dict[str, Any]) -> list[str]:
    rows = [
        "| network | batch | runtime | latency (ms) | images/s | ORT vs eager (latency) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for result in section["results"]:
        for runtime in ("ort", "eager"):
            r = result[runtime]
            ratio = _ratio(result["latency_ratio"]) if runtime == "ort" else ""
            rows.append(
                f"| {result['network']} | {result['batch']} | {runtime} | {_fig(r['latency_ms'], digits=3)} "
                f"| {_fig(r['images_per_s'], digits=0)} | {ratio} |"
            )
    return rows


def orchestration_table(section: dict[str, Any]) -> list[str]:
    rows = ["| step | seconds | reference | reference seconds |", "| --- | --- | --- | --- |"]
    for name, result in section.items():
        if "skipped" in result:
            rows.append(f"| {name} | skipped: {result['skipped']} | | |")
            continue
        ref = result.get("reference")
        rows.append(
            f"| `{result['command']}` | {_fig(result['seconds'], digits=3)} "
            f"| {'' if ref is None else '`' + ref['command'] + '`'} "
            f"| {'' if ref is None else _fig(ref['seconds'], digits=3)} |"
        )
    return rows


def targets_table(targets: list[dict[str, Any]]) -> list[str]:
    rows = ["| target | measured | met |", "| --- | --- | --- |"]
    for t in targets:
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        rows.append(f"| {t['target']} | {t['measured']} | {met} |")
    return rows


def render(results: dict[str, Any]) -> str:
    """The whole result as markdown (what `bench.run` prints and docs/performance.md quotes)."""
    lines = [
        f"Device: {results['device']} (torch {results['versions']['torch']}, "
        f"onnxruntime {results['versions'].get('onnxruntime')}, {results['torch_threads']} torch threads); "
        f"load average at start {results['load_average']['start']}, at end {results['load_average']['end']}; "
        f"{'quick mode; ' if results['quick'] else ''}bench wall time {results['wall_s']:.0f} s.",
    ]
    builders = {
        "training": training_table, "fid": fid_table, "inference": inference_table,
        "orchestration": orchestration_table,
    }  # fmt: skip
    for name, build in builders.items():
        section = results.get(name)
        if section is None:
            continue
        lines += ["", f"### {name}", ""]
        lines += [f"skipped: {section['skipped']}"] if "skipped" in section else build(section)
    lines += ["", "### targets", "", *targets_table(results["targets"])]
    return "\n".join(lines) + "\n"
