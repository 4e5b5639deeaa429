"""The manual's receptive-field figure (docs/erf_definitions.png): the receptive-field definitions on one real pixel.

Panels: the input crop with the pixel p; |g_p| (log scale); the pixels above the global
threshold with their bounding box, count, area and fulfillment; the squares holding 50 % and
90 % of the gradient mass, and the mass-weighted centroid; the count map of the whole crop.

    python benchmarks/erf_figure.py --checkpoint vessmap-w16 --data ../shared/data/vessmap \
        --out docs/erf_definitions.png
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def main() -> None:
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Rectangle

    from vessel_lens.data.source import open_dataset
    from vessel_lens.interpret import gradient_magnitude, jacobian
    from vessel_lens.interpret.fields.thresholded import receptive_field_maps
    from vessel_lens.models import load_model
    from vessel_lens.viz.figures import add_colorbar, new_figure, save_figure

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="vessmap-w16")
    parser.add_argument("--data", default=None)
    parser.add_argument("--split", default="test")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument(
        "--pixel", default="auto", help="ROW,COL within the crop (auto: the largest count)"
    )
    parser.add_argument("--fraction", type=float, default=0.01)
    parser.add_argument("--out", default="docs/erf_definitions.png")
    args = parser.parse_args()
    torch.set_num_threads(1)

    model, _ = load_model(args.checkpoint, "cpu")
    sample = open_dataset(args.data, require_labels=False).subset(args.split)[0]
    top = (sample.image.shape[-2] - args.size) // 2
    left = (sample.image.shape[-1] - args.size) // 2
    crop = sample.image[:, top : top + args.size, left : left + args.size]
    maps = receptive_field_maps(model, crop, (args.fraction,), "global")
    if args.pixel == "auto":
        row, col = divmod(int(maps.count[0].argmax()), args.size)
    else:
        row, col = (int(v) for v in args.pixel.split(","))
    gradient = jacobian(model, crop, pixels=[[row, col]])[0]
    magnitude = gradient_magnitude(gradient).numpy()
    stats = maps.stats(row, col, 0)

    figure = new_figure(15.5, 3.6)
    axes = [figure.add_subplot(1, 5, i + 1) for i in range(5)]
    axes[0].imshow(crop[0].numpy(), cmap="gray")
    axes[0].set_title(
        f"input; p = ({row}, {col}), P(vessel) {maps.probability[row, col]:.2f}", fontsize=9
    )
    positive = magnitude[magnitude > 0]
    norm = LogNorm(vmin=max(positive.min(), positive.max() * 1e-4), vmax=positive.max())
    shown = axes[1].imshow(np.where(magnitude > 0, magnitude, np.nan), cmap="magma", norm=norm)
    add_colorbar(figure, shown, axes[1], "|g_p| [P(vessel) / intensity], log scale", shrink=0.8)
    axes[1].set_title("|g_p| (log scale)", fontsize=9)
    axes[2].imshow(magnitude > stats.threshold, cmap="Greys")
    axes[2].add_patch(
        Rectangle(
            (stats.left - 0.5, stats.top - 0.5),
            stats.width,
            stats.height,
            fill=False,
            color="#e03030",
            lw=1.5,
        )
    )
    axes[2].set_title(
        f"|g_p| > {100 * args.fraction:g} % of global max\ncount {stats.count}, area "
        f"{stats.area}, fulfillment {stats.fulfillment:.2f}",
        fontsize=9,
    )
    axes[3].imshow(np.where(magnitude > 0, magnitude, np.nan), cmap="magma", norm=norm)
    for q, radius, colour in zip(
        maps.mass_fractions,
        maps.mass_radius[:, row, col].tolist(),
        ("#30c0ff", "#60ff60"),
        strict=False,
    ):
        side = 2 * radius + 1
        axes[3].add_patch(
            Rectangle(
                (col - radius - 0.5, row - radius - 0.5),
                side,
                side,
                fill=False,
                color=colour,
                lw=1.5,
                label=f"{100 * q:g} % of mass: r = {radius:g} px",
            )
        )
    d_row, d_col = maps.centroid_offset[row, col].tolist()
    axes[3].annotate(
        "",
        xy=(col + d_col, row + d_row),
        xytext=(col, row),
        arrowprops={"arrowstyle": "->", "color": "white"},
    )
    axes[3].legend(fontsize=7, loc="lower left")
    axes[3].set_title(
        f"mass radii (|g_p| as left); centroid offset\n({d_row:.1f}, {d_col:.1f}) pixels",
        fontsize=9,
    )
    count = axes[4].imshow(maps.count[0].numpy(), cmap="viridis", interpolation="nearest")
    add_colorbar(figure, count, axes[4], "count(p) [input pixels]", integer=True, shrink=0.8)
    axes[4].set_title(f"count(p) for every p, {100 * args.fraction:g} % global", fontsize=9)
    for ax in axes:
        ax.plot(col, row, "x", color="#30ff30" if ax is not axes[3] else "white", ms=6)
        ax.set_xticks([])
        ax.set_yticks([])
    save_figure(figure, args.out, dpi=90)
    print(f"wrote {args.out} ({sample.stem}, crop at ({top}, {left}))")


if __name__ == "__main__":
    main()
