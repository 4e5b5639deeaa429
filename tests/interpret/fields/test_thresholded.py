"""Receptive-field maps: known answers, agreement with ``pixel_stats`` row by row, streaming
equal to in-memory for every mode, ``from_jacobian`` equal to direct, storage round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from vessel_lens.errors import ConfigError, DataError
from vessel_lens.interpret import gradient_magnitude, jacobian, pixel_stats, threshold_value
from vessel_lens.interpret.fields.maps import ARRAYS, summarise
from vessel_lens.interpret.fields.store import (
    load_receptive_field_maps,
    read_erf_metadata,
    save_receptive_field_maps,
)
from vessel_lens.interpret.fields.thresholded import (
    receptive_field_maps,
    receptive_field_maps_from_jacobian,
)
from vessel_lens.models import create_model

KERNEL = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 5.0], [6.0, 7.0, 8.0]]) / 9


def single_conv(channels: int = 1) -> nn.Module:
    """One 3x3 convolution; class 1's kernel is KERNEL (negated in channel 1), class 0's zero."""
    conv = nn.Conv2d(channels, 2, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        for c in range(channels):
            conv.weight[1, c] = KERNEL * (-1) ** c * (c + 1)
    return conv


def reference_stats(rows: torch.Tensor, fractions, mode, channels="sum"):
    """count, box, threshold per (fraction, channel, row) from ``pixel_stats`` on each row."""
    magnitude = gradient_magnitude(rows)[:, None] if channels == "sum" else rows.abs()
    global_max = float(magnitude.max())
    out = {}
    for n in range(len(rows)):
        for c in range(magnitude.shape[1]):
            for t, fraction in enumerate(fractions):
                m = magnitude[n, c]
                out[(t, c, n)] = pixel_stats(m, threshold_value(m, fraction, mode, global_max))
    return out, global_max


def maps_stats(maps, flat, t, c, width):
    r, col = divmod(int(flat), width)
    return maps.stats(r, col, t, c)


def assert_maps_equal(a, b):
    for name in ARRAYS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape, name
        if x.is_floating_point():
            assert torch.equal(x.nan_to_num(-7.0), y.nan_to_num(-7.0)), name
        else:
            assert torch.equal(x, y), name
    assert a.global_max == b.global_max


def test_single_convolution_known_answers():
    model = single_conv()
    image = torch.rand(1, 7, 8)
    maps = receptive_field_maps(
        model, image, (0.5, 0.3), "pixel", output="logit", mass_fractions=(0.1, 0.5, 1.0)
    )
    # Interior pixel: entries above 4.5/9 are 5, 6, 7, 8, 9 -> 5, in the kernel's lower 2 rows.
    assert int(maps.count[0, 3, 4]) == 5
    assert maps.bbox[0, 3, 4].tolist() == [3, 3, 4, 5]
    assert int(maps.area[0, 3, 4]) == 6
    assert float(maps.fulfillment[0, 3, 4]) == pytest.approx(5 / 6)
    # Above 2.7/9: 3, 4, 5, 6, 7, 8, 9 -> 7; the box is the kernel's support.
    assert int(maps.count[1, 3, 4]) == 7
    assert maps.bbox[1, 3, 4].tolist() == [2, 3, 4, 5]
    # Top-left corner: only 9, 5, 7, 8 are inside the image, all above 4.5/9.
    assert int(maps.count[0, 0, 0]) == 4
    assert maps.bbox[0, 0, 0].tolist() == [0, 0, 1, 1]
    # Bottom-right corner: 1, 2, 4, 9 are inside; above 4.5/9 only 9.
    assert int(maps.count[0, 6, 7]) == 1
    assert maps.bbox[0, 6, 7].tolist() == [6, 7, 6, 7]
    # Mass 45/9: the centre holds 9/45 = 20 %, the 3x3 square all of it.
    assert maps.mass_radius[:, 3, 4].tolist() == [0.0, 1.0, 1.0]
    assert maps.centroid_offset[3, 4].tolist() == pytest.approx([15 / 45, 5 / 45])
    assert float(maps.peak[3, 4]) == pytest.approx(1.0)
    assert float(maps.mass[3, 4]) == pytest.approx(5.0)
    assert maps.global_max == pytest.approx(1.0)
    assert bool(maps.computed.all())
    # The original's normalised map: count over the largest count.
    assert float(maps.normalised[0, 3, 4]) == pytest.approx(5 / int(maps.count[0].max()))


def test_absolute_and_global_modes_on_the_single_convolution():
    model = single_conv()
    image = torch.rand(1, 6, 6)
    absolute = receptive_field_maps(model, image, (7.5 / 9,), "absolute", output="logit")
    assert int(absolute.count[0, 2, 2]) == 2  # 8 and 9
    glob = receptive_field_maps(model, image, (7.5 / 9,), "global", output="logit")
    assert torch.equal(glob.count, absolute.count)
    assert glob.threshold.unique().tolist() == [pytest.approx(7.5 / 9)]


@pytest.mark.parametrize("channels", ["sum", "separate"])
@pytest.mark.parametrize("mode", ["global", "pixel", "absolute"])
def test_maps_agree_with_pixel_stats_row_by_row(mode, channels):
    torch.manual_seed(1)
    rows = torch.randn(30, 3, 9, 11) * torch.rand(30, 1, 1, 1) ** 3
    rows[4] = 0  # a row without any gradient
    rows[7, :, 2:5, 3:6] = 0
    rows[9, 0, 1, 1] = -50.0  # the peak is negative: thresholds compare magnitudes
    fractions = (0.001, 0.2, 0.5) if mode != "absolute" else (0.1, 1.0, 3.0)
    pixels = torch.randperm(99)[:30]
    maps = receptive_field_maps_from_jacobian(
        rows, fractions, mode, pixels=pixels, channels=channels, chunk_size=4
    )
    expected, global_max = reference_stats(rows, fractions, mode, channels)
    assert maps.global_max == global_max
    for (t, c, n), stats in expected.items():
        assert maps_stats(maps, pixels[n], t, c, 11) == stats
    computed = torch.zeros(99, dtype=torch.bool)
    computed[pixels] = True
    assert torch.equal(maps.computed.reshape(-1), computed)
    grid = maps.count[0] if channels == "sum" else maps.count[0, 0]
    assert (grid.reshape(-1)[~computed] == -1).all()


def test_thresholds_are_strict_and_exact_at_ties():
    rows = torch.zeros(2, 1, 3, 3)
    rows[0, 0, 0, 0], rows[0, 0, 1, 1], rows[0, 0, 2, 2] = 1.0, 0.5, 0.25
    rows[1, 0, 0, 0] = 0.5
    maps = receptive_field_maps_from_jacobian(rows, (0.5, 0.25), "global", pixels=[0, 4])
    assert maps.count[:, 0, 0].tolist() == [1, 2]  # 0.5 is not above 0.5
    assert maps.count[:, 1, 1].tolist() == [0, 1]
    assert maps.bbox[0, 1, 1].tolist() == [-1, -1, -1, -1]
    assert float(maps.fulfillment[0, 1, 1]) == 0.0 and int(maps.area[0, 1, 1]) == 0
    # float32(0.1) is above the double 0.1 but equal to the threshold rounded to float32,
    # which is what pixel_stats compares with: it does not count.
    rows = torch.zeros(1, 1, 2, 2)
    rows[0, 0, 0, 0], rows[0, 0, 1, 1] = 1.0, 0.1
    for mode in ("pixel", "global"):
        maps = receptive_field_maps_from_jacobian(rows, (0.1,), mode, pixels=[3])
        reference = pixel_stats(rows[0, 0], threshold_value(rows[0, 0], 0.1, mode, 1.0))
        assert int(maps.count[0, 1, 1]) == reference.count == 1


def test_global_mode_stays_exact_while_the_running_maximum_grows():
    # Each chunk's rows are larger than all before: the kept entries are pruned many times.
    torch.manual_seed(2)
    rows = torch.rand(40, 1, 12, 12) ** 4
    rows *= (1.6 ** torch.arange(40).float())[:, None, None, None]
    fractions = (0.0005, 0.01, 0.3)
    maps = receptive_field_maps_from_jacobian(
        rows, fractions, "global", chunk_size=2, pixels=torch.arange(40)
    )
    expected, global_max = reference_stats(rows, fractions, "global")
    assert maps.global_max == global_max
    for (t, c, n), stats in expected.items():
        assert maps_stats(maps, n, t, c, 12) == stats
    assert maps.metadata["kept_entries_peak"] < rows.numel()


def test_mass_radius_and_centroid_match_a_direct_computation():
    torch.manual_seed(3)
    rows = torch.rand(12, 2, 10, 13) ** 3
    pixels = torch.randperm(130)[:12]
    quantiles = (0.25, 0.5, 0.9, 1.0)
    maps = receptive_field_maps_from_jacobian(
        rows, (0.1,), "pixel", pixels=pixels, mass_fractions=quantiles, chunk_size=5
    )
    magnitude = gradient_magnitude(rows).double()
    ys, xs = torch.meshgrid(torch.arange(10), torch.arange(13), indexing="ij")
    for n, flat in enumerate(pixels.tolist()):
        r, c = divmod(flat, 13)
        m = magnitude[n]
        total = m.sum()
        centre = [float((m * ys).sum() / total - r), float((m * xs).sum() / total - c)]
        assert maps.centroid_offset[r, c].tolist() == pytest.approx(centre, abs=1e-5)
        chebyshev = torch.maximum((ys - r).abs(), (xs - c).abs())
        for q, radius in zip(quantiles, maps.mass_radius[:, r, c].tolist(), strict=True):
            inside = [float(m[chebyshev <= k].sum()) for k in range(14)]
            assert radius == next(k for k, v in enumerate(inside) if v >= q * float(total))


def test_streaming_equals_in_memory_and_from_jacobian_for_a_resnet():
    torch.manual_seed(0)
    model = create_model("resnet_seg", width=4).eval()
    image = torch.rand(1, 20, 24)
    fractions = (0.005, 0.05, 0.5)
    rows = jacobian(model, image, chunk_size=40)
    for mode in ("global", "pixel"):
        for channels in ("sum", "separate"):
            direct = receptive_field_maps(
                model, image, fractions, mode, chunk_size=40, channels=channels
            )
            stored = receptive_field_maps_from_jacobian(
                rows, fractions, mode, probability=direct.probability, channels=channels
            )
            assert_maps_equal(direct, stored)
            expected, global_max = reference_stats(rows, fractions, mode, channels)
            assert direct.global_max == global_max
            for (t, c, n), stats in list(expected.items())[::7]:
                assert maps_stats(direct, n, t, c, 24) == stats


def test_a_subset_of_pixels_and_the_model_is_left_as_found():
    torch.manual_seed(0)
    model = create_model("resnet_seg", width=4).train()
    image = torch.rand(1, 16, 16)
    pixels = [[0, 0], [5, 7], [15, 15]]
    maps = receptive_field_maps(model, image, (0.1,), "pixel", pixels=pixels)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert int(maps.computed.sum()) == 3 and bool(maps.computed[5, 7])
    assert int(maps.count[0, 1, 1]) == -1 and torch.isnan(maps.fulfillment[0, 1, 1])
    full = receptive_field_maps(model, image, (0.1,), "pixel")
    assert int(full.count[0, 5, 7]) == int(maps.count[0, 5, 7])


def test_store_round_trip_and_summary(tmp_path):
    model = single_conv(channels=2)
    maps = receptive_field_maps(model, torch.rand(2, 9, 9), (0.1, 0.5), "pixel", output="logit")
    maps.metadata.update(stem="x", crop_box=[1, 2, 9, 9])
    path = save_receptive_field_maps(maps, tmp_path / "x.erf.npz")
    loaded = load_receptive_field_maps(path)
    assert_maps_equal(maps, loaded)
    assert loaded.fractions == (0.1, 0.5) and loaded.mode == "pixel"
    assert loaded.metadata["crop_box"] == [1, 2, 9, 9]
    assert read_erf_metadata(path)["stem"] == "x"
    row = summarise(loaded)
    assert row["pixels"] == 81 and row["count_mean_10%"] == pytest.approx(
        float(maps.count[0].float().mean())
    )
    loaded.count[1] = torch.arange(81, dtype=torch.int32).reshape(9, 9)
    loaded.computed[0, 0] = False  # 80 pixels holding 1..80: the median is 40.5
    assert summarise(loaded)["count_median_50%"] == 40.5
    (tmp_path / "bad.erf.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable"):
        load_receptive_field_maps(tmp_path / "bad.erf.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(2))
    with pytest.raises(DataError, match="not a vessel-lens"):
        load_receptive_field_maps(tmp_path / "other.npz")


def test_separate_channels_follow_each_channel():
    model = single_conv(channels=2)
    maps = receptive_field_maps(
        model, torch.rand(2, 7, 7), (0.5,), "pixel", output="logit", channels="separate"
    )
    assert maps.count.shape == (1, 2, 7, 7) and maps.mass_radius.shape == (2, 2, 7, 7)
    assert maps.centroid_offset.shape == (2, 7, 7, 2)
    # Channel 1 is -2 x KERNEL: the same counts per channel, twice the peak.
    assert torch.equal(maps.count[0, 0], maps.count[0, 1])
    assert float(maps.peak[1, 3, 3]) == pytest.approx(2.0)
    summed = receptive_field_maps(model, torch.rand(2, 7, 7), (0.5,), "pixel", output="logit")
    assert summed.count.shape == (1, 7, 7) and float(summed.peak[3, 3]) == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fractions": (1.5,)}, "must be in"),
        ({"fractions": ()}, "at least one"),
        ({"fractions": (0.1, 0.1)}, "only once"),
        ({"mode": "median"}, "mode"),
        ({"channels": "mean"}, "channels"),
        ({"mass_fractions": (0.0,)}, "mass fractions"),
        ({"global_max": 1.0, "mode": "pixel"}, "global_max"),
        ({"colouring": "sometimes"}, "colouring"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_bad_options_raise_one_line_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message) as info:
        receptive_field_maps(single_conv(), torch.rand(1, 5, 5), **kwargs)
    assert "\n" not in str(info.value)


def test_from_jacobian_checks_its_input():
    with pytest.raises(ConfigError, match="one pixel per row"):
        receptive_field_maps_from_jacobian(torch.rand(3, 1, 4, 4))
    with pytest.raises(ConfigError, match="repeat"):
        receptive_field_maps_from_jacobian(torch.rand(2, 1, 4, 4), pixels=[1, 1])
    with pytest.raises(ConfigError, match="tensor"):
        receptive_field_maps_from_jacobian(np.zeros((2, 1, 4, 4)))


def test_importing_the_modules_keeps_the_package_names():
    import importlib

    import vessel_lens.interpret as interpret
    from vessel_lens.interpret.fields.structural import receptive_field
    from vessel_lens.interpret.jacobian.engine import jacobian

    for name in (
        "interpret.fields.thresholded",
        "interpret.fields.maps",
        "interpret.fields.run",
        "interpret.fields.stats",
        "interpret.fields.stats_run",
        "interpret.fields.store",
        "interpret.jacobian.run",
        "interpret.jacobian.strategies",
        "viz.field_figures",
    ):
        importlib.import_module(f"vessel_lens.{name}")
    assert interpret.receptive_field is receptive_field
    # the subpackage vessel_lens.interpret.jacobian never hides the function of that name
    assert interpret.jacobian is jacobian


def test_the_nearest_stored_fraction_is_nearest_on_a_log_scale():
    """The app shows the stored fraction nearest the page's threshold: 0.03 lies nearer 0.05
    than 0.01 on the log slider (linearly the two tie and 0.01 was shown)."""
    from types import SimpleNamespace

    from vessel_lens.interpret.fields.maps import ReceptiveFieldMaps

    def nearest(stored, page):
        index = ReceptiveFieldMaps.fraction_index(SimpleNamespace(fractions=stored), page)
        return stored[index]

    assert nearest((0.01, 0.05), 0.03) == 0.05
    assert nearest((0.1, 0.5), 0.3) == 0.5
    assert nearest((0.005, 0.01, 0.05), 0.011) == 0.01
    assert nearest((0.0, 0.01), 0.0) == 0.0
    assert nearest((0.0, 0.01), 0.001) == 0.01
