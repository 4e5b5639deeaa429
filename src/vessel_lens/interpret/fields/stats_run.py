"""``vessel-lens erf-stats``: the run that tabulates every map file of a folder against the
dataset's labels (:mod:`.stats`), writes the tables as CSV and draws the plots
(:mod:`vessel_lens.viz.field_stats_plots`)."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vessel_lens.errors import ConfigError, DataError
from vessel_lens.interpret.fields.stats import pixel_table, tabulate
from vessel_lens.interpret.fields.store import find_receptive_field_maps, load_receptive_field_maps

MARKER = "stats_answer.csv"
WRITTEN = tuple(
    f"stats_{name}" for name in ("by_class.csv", "by_distance.csv", "by_width.csv",
                                 "per_image.csv", "by_outcome.png", "by_distance.png",
                                 "by_width.png")
)  # fmt: skip
"""The other files erf-stats writes (refused, like the marker, unless --overwrite)."""


@dataclass
class StatsConfig:
    """Settings of one ``vessel-lens erf-stats`` run."""

    erf_dir: Path
    data: str | None = None
    split: str = "all"
    out: Path | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        self.erf_dir = Path(self.erf_dir)
        if not self.erf_dir.is_dir():
            raise ConfigError(f"{self.erf_dir}: not a folder")
        self.out = Path(self.out) if self.out is not None else self.erf_dir / "stats"


@dataclass
class StatsResult:
    tables: dict[str, Path] = field(default_factory=dict)
    plots: dict[str, Path] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    pixels: dict[str, np.ndarray] = field(default_factory=dict)


def _write_csv(path: Path, rows: list[dict]) -> Path:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    return path


def erf_stats(config: StatsConfig) -> StatsResult:
    """Run ``vessel-lens erf-stats`` (see the module docs)."""
    from vessel_lens.data.source import open_dataset
    from vessel_lens.outputs import claim_output

    files = find_receptive_field_maps(config.erf_dir)
    if not files:
        raise DataError(f"{config.erf_dir}: holds no *.erf.npz file (run vessel-lens erf first)")
    dataset = open_dataset(config.data, require_labels=True)
    written = (MARKER, *WRITTEN)
    with claim_output(config.out, "erf-stats", replaces=written, overwrite=config.overwrite):
        return _tabulate_folder(config, files, dataset, config.out)


def _tabulate_folder(config: StatsConfig, files: list[Path], dataset, out: Path) -> StatsResult:
    from vessel_lens.viz.field_stats_plots import plot_stats

    allowed = {s.stem for s in dataset.subset(config.split)}
    parts, stems, skipped, outside, modes = [], [], [], 0, set()
    for path in files:
        maps = load_receptive_field_maps(path)
        stem = str(maps.metadata.get("stem", path.name[: -len(".erf.npz")]))
        if stem not in dataset.samples:
            raise DataError(f"{path}: image {stem!r} is not in {dataset.name}")
        if stem not in allowed:
            skipped.append(stem)
            continue
        part = pixel_table(maps, dataset.samples[stem])
        modes.add(maps.mode)
        outside += int(maps.computed.sum()) - len(part["predicted"])
        parts.append(part)
        stems.append(np.full(len(part["predicted"]), stem, dtype=object))
    if not parts:
        raise DataError(f"{config.erf_dir}: no map file belongs to split {config.split!r}")
    table = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    stem_column = np.concatenate(stems)
    result = StatsResult(pixels=table)
    tables = tabulate(table, stem_column)
    for key, rows in tables.items():
        result.tables[key] = _write_csv(out / f"stats_{key}.csv", rows)
    result.plots = plot_stats(table, out, modes.pop() if len(modes) == 1 else None)
    result.lines = _summary_lines(tables["answer"], len(parts), len(table["predicted"]), out)
    if outside:
        result.lines.append(f"left out {outside} pixels outside the field-of-view masks")
    if skipped:
        result.lines.append(f"skipped {len(skipped)} map file(s) outside split {config.split!r}")
    return result


def _summary_lines(answer: list[dict], images: int, pixels: int, out: Path) -> list[str]:
    lines = [f"{images} image(s), {pixels} pixels; tables and plots in {out}"]
    lines.append("predicted background vs vessel (mean; images where background is larger):")
    for row in answer:
        lines.append(
            f"  {row['metric']:<24} {row['background_mean']:10.3g} vs {row['vessel_mean']:10.3g}"
            f"  ({row['ratio_background_to_vessel']:.2f}x; {row['images_background_larger']}"
            f"/{row['images']})"
        )
    return lines
