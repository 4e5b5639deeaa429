"""Receptive-field size against what the pixel is: the statistics behind ``vessel-lens erf-stats``.

For every computed pixel of every map file in a folder: the predicted class (probability >
0.5), the label, the outcome (TP/FP/FN/TN), the Euclidean distance to the nearest vessel
centreline (skeleton pixel) and the local vessel width there, ``2 d - 1`` with d the distance
from that centreline pixel to the nearest background pixel (exact for straight vessels of odd
width: the centre of a 5-pixel band is 3 pixels from the background). Pixels outside an
image's field-of-view mask are left out. Distances are computed
on the whole image and then cropped, so crops do not shorten them. Skeletons come from the
dataset, or are computed from the label (scikit-image) when it has none.

Tables (CSV, in ``out``): ``stats_by_class`` (by predicted class, label and outcome),
``stats_by_distance`` and ``stats_by_width`` (binned, by predicted class),
``stats_per_image`` and ``stats_answer`` (predicted background against vessel: does the
network look further away for background pixels?). The run that writes them is
:mod:`.stats_run`; the plots are :mod:`vessel_lens.viz.field_stats_plots`.
"""

from __future__ import annotations

import itertools

import numpy as np

from vessel_lens.errors import DataError

OUTCOMES = ("TN", "TP", "FN", "FP")
"""Outcome codes: predicted + 2 * (predicted != label)."""
DISTANCE_BINS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
WIDTH_BINS = (2.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0)
VESSEL_CLASS = 1
"""The class whose probability above 0.5 is the predicted vessel mask."""


def _percent(value: float) -> str:
    return f"{100 * value:g}%"


def centreline_geometry(label: np.ndarray, skeleton: np.ndarray | None):
    """Per pixel of the whole image: distance to the nearest centreline pixel and the local
    vessel width there (NaN where the image has no centreline)."""
    from scipy import ndimage

    label = np.asarray(label, dtype=bool)
    if skeleton is None:
        from skimage.morphology import skeletonize

        skeleton = skeletonize(label)
    skeleton = np.asarray(skeleton, dtype=bool)
    if not skeleton.any():
        nan = np.full(label.shape, np.nan)
        return nan, nan.copy()
    distance, (iy, ix) = ndimage.distance_transform_edt(~skeleton, return_indices=True)
    to_background = ndimage.distance_transform_edt(label)
    width = 2 * to_background[iy, ix] - 1
    return distance, np.where(width > 0, width, np.nan)


def threshold_counts(maps, pick) -> dict[str, np.ndarray]:
    """``count_<f>``: pixels above each threshold fraction."""
    return {
        f"count_{_percent(fraction)}": pick(maps.count[index]).astype(np.float64)
        for index, fraction in enumerate(maps.fractions)
    }


def mass_radii(maps, pick) -> dict[str, np.ndarray]:
    """``mass_radius_<q>``: the radius holding each fraction of the gradient mass."""
    return {
        f"mass_radius_{_percent(q)}": pick(maps.mass_radius[index]).astype(np.float64)
        for index, q in enumerate(maps.mass_fractions)
    }


def centroid_distance(maps, pick) -> dict[str, np.ndarray]:
    """``centroid_distance``: how far the gradient mass's centroid lies from the pixel."""
    offsets = pick(maps.centroid_offset)
    return {"centroid_distance": np.linalg.norm(offsets, axis=-1).astype(np.float64)}


FIELD_STATISTICS = (threshold_counts, mass_radii, centroid_distance)
"""The per-pixel statistics of a receptive-field map that erf-stats tabulates: each maps
``(maps, pick)`` to named columns, where ``pick(array)`` takes a (C?, H, W, ...) map array to
the computed pixels inside the field of view (first channel of per-channel maps). A new
statistic is one function here and one entry in this tuple."""
GEOMETRY = ("predicted", "label", "outcome", "distance", "width")
"""The columns of a pixel table that say what the pixel is, not how large its field is."""


def pixel_table(maps, sample) -> dict[str, np.ndarray]:
    """One row per computed pixel of ``maps`` inside the sample's field-of-view mask (if it
    has one) with its class, geometry and field sizes."""
    if sample.label is None:
        raise DataError(f"image {sample.stem}: has no label; erf-stats needs labels")
    target = int(maps.metadata.get("target_class", VESSEL_CLASS))
    if target != VESSEL_CLASS:
        raise DataError(
            f"image {sample.stem}: its maps differentiate class {target}, whose probability "
            f"does not give the predicted vessel mask; erf-stats needs maps of class "
            f"{VESSEL_CLASS} (vessel-lens erf --target-class {VESSEL_CLASS})"
        )
    whole = [0, 0, maps.height, maps.width]
    top, left, height, width = (int(v) for v in maps.metadata.get("crop_box", whole))
    full_h, full_w = sample.size
    if (
        (height, width) != (maps.height, maps.width)
        or top + height > full_h
        or left + width > full_w
    ):
        raise DataError(
            f"image {sample.stem}: is {full_h}x{full_w}, which does not hold the maps' crop "
            f"{height}x{width} at ({top}, {left}); was it computed on another dataset?"
        )
    if maps.channels == "separate" and maps.count.shape[1] > 1:
        raise DataError(
            f"image {sample.stem}: its maps are per input channel (--channels separate); "
            "erf-stats compares one map per image: rerun vessel-lens erf with --channels sum"
        )
    label = sample.label.numpy().astype(bool)
    skeleton = sample.skeleton.numpy() if sample.skeleton is not None else None
    distance, vessel_width = centreline_geometry(label, skeleton)
    window = (slice(top, top + height), slice(left, left + width))
    computed = maps.computed.numpy()
    if sample.mask is not None:
        computed = computed & sample.mask.numpy()[window]

    def pick(values) -> np.ndarray:
        values = values.numpy() if hasattr(values, "numpy") else values
        if maps.channels == "separate":
            values = values[0]
        return values[computed]

    predicted = (maps.probability.numpy() > 0.5)[computed]
    truth = label[window][computed]
    table = {
        "predicted": predicted.astype(np.int8),
        "label": truth.astype(np.int8),
        "outcome": (predicted.astype(np.int8) + 2 * (predicted != truth)).astype(np.int8),
        "distance": distance[window][computed],
        "width": vessel_width[window][computed],
    }
    for statistic in FIELD_STATISTICS:
        table.update(statistic(maps, pick))
    return table


def metric_names(table: dict[str, np.ndarray]) -> list[str]:
    """The field statistics among a pixel table's columns (everything but :data:`GEOMETRY`)."""
    return [k for k in table if k not in GEOMETRY]


def _describe(table, mask, metrics) -> dict[str, float]:
    row: dict[str, float] = {"pixels": int(mask.sum())}
    for name in metrics:
        values = table[name][mask]
        values = values[np.isfinite(values)]
        row[f"{name}_mean"] = float(values.mean()) if len(values) else float("nan")
        row[f"{name}_median"] = float(np.median(values)) if len(values) else float("nan")
    return row


def bin_index(values: np.ndarray, edges: tuple[float, ...]) -> tuple[np.ndarray, list[str]]:
    """Bin index per value (-1 for NaN) and bin names: ``<= e0``, ``(e0, e1]``, ..., ``> en``."""
    index = np.searchsorted(np.asarray(edges), values, side="left")
    index = np.where(np.isfinite(values), index, -1)
    names = [f"<= {edges[0]:g}"]
    names += [f"({a:g}, {b:g}]" for a, b in itertools.pairwise(edges)]
    return index, [*names, f"> {edges[-1]:g}"]


def tabulate(table: dict[str, np.ndarray], stems: np.ndarray) -> dict[str, list[dict]]:
    """The statistics tables of a pooled pixel table (see the module docs)."""
    metrics = metric_names(table)
    classes = (("background", table["predicted"] == 0), ("vessel", table["predicted"] == 1))
    by_class = []
    for name, mask in classes:
        by_class.append({"grouping": "predicted", "group": name, **_describe(table, mask, metrics)})
    for value, name in ((0, "background"), (1, "vessel")):
        mask = table["label"] == value
        by_class.append({"grouping": "label", "group": name, **_describe(table, mask, metrics)})
    for value, name in enumerate(OUTCOMES):
        mask = table["outcome"] == value
        by_class.append({"grouping": "outcome", "group": name, **_describe(table, mask, metrics)})
    tables = {"by_class": by_class}
    for key, column, edges in (
        ("by_distance", "distance", DISTANCE_BINS),
        ("by_width", "width", WIDTH_BINS),
    ):
        index, names = bin_index(table[column], edges)
        rows = []
        for b, bin_name in enumerate(names):
            for name, mask in classes:
                row = _describe(table, mask & (index == b), metrics)
                rows.append({column: bin_name, "predicted": name, **row})
        tables[key] = rows
    per_image = []
    for stem in dict.fromkeys(stems.tolist()):
        for name, mask in classes:
            row = _describe(table, mask & (stems == stem), metrics)
            per_image.append({"stem": stem, "predicted": name, **row})
    tables["per_image"] = per_image
    tables["answer"] = answer_rows(table, stems, metrics)
    return tables


def answer_rows(table, stems, metrics) -> list[dict]:
    rows = []
    background, vessel = table["predicted"] == 0, table["predicted"] == 1
    unique = list(dict.fromkeys(stems.tolist()))
    for name in metrics:
        values = table[name]
        b = _describe(table, background, [name])
        v = _describe(table, vessel, [name])
        further = 0
        for stem in unique:
            mine = stems == stem
            bs, vs = values[mine & background], values[mine & vessel]
            bs, vs = bs[np.isfinite(bs)], vs[np.isfinite(vs)]
            further += int(len(bs) > 0 and len(vs) > 0 and bs.mean() > vs.mean())
        mean_b, mean_v = b[f"{name}_mean"], v[f"{name}_mean"]
        rows.append(
            {
                "metric": name,
                "background_mean": mean_b,
                "vessel_mean": mean_v,
                "ratio_background_to_vessel": mean_b / mean_v if mean_v else float("nan"),
                "background_median": b[f"{name}_median"],
                "vessel_median": v[f"{name}_median"],
                "images_background_larger": further,
                "images": len(unique),
                "background_pixels": b["pixels"],
                "vessel_pixels": v["pixels"],
            }
        )
    return rows
