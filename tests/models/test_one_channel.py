"""Models with one output channel (a sigmoid head) in every command and API.

One shared helper, :func:`sigmoid_reference`, works out what every place must give for a
one-channel model: the logit z, the probability 1 / (1 + exp(-z)) written out by hand, and
the Jacobians of sigmoid(z) and of z from ``torch.autograd.functional.jacobian`` (float64).
The API is checked on a plain torch model, every command on the registry's ``resnet_seg``
built with ``num_classes=1``; gradients must agree to 1e-5 of max |J|.
"""

from __future__ import annotations

import copy
import csv
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from vessel_lens.cli import main
from vessel_lens.data import write_synthetic_dataset
from vessel_lens.data.source import open_dataset
from vessel_lens.errors import ConfigError
from vessel_lens.interpret import (
    JacobianEngine,
    attribute,
    deletion_curves,
    jacobian,
    load_jacobian,
    load_receptive_field_maps,
    mask_target,
    pixel_target,
    predicted_vessels,
    randomisation_test,
    receptive_field,
    receptive_field_maps,
    receptive_field_maps_from_jacobian,
)
from vessel_lens.interpret.proof.check import check_model
from vessel_lens.interpret.thresholds import gradient_magnitude
from vessel_lens.models import create_model, load_model, save_checkpoint
from vessel_lens.models.heads import class_scores, predicted_vessel
from vessel_lens.training import vessel_probability
from vessel_lens.training.config import TrainConfig
from vessel_lens.training.losses import make_loss
from vessel_lens.training.metrics import confusion as count_confusion
from vessel_lens.training.metrics import overlap_scores

STRATEGIES = ("linear", "vmap", "loop")


def sigmoid_reference(model: nn.Module, image: torch.Tensor) -> SimpleNamespace:
    """What a one-channel ``model`` gives at ``image`` (C, H, W), worked out in float64:
    ``logit`` z (H, W), ``probability`` 1 / (1 + exp(-z)), and ``jacobian`` /
    ``logit_jacobian`` (H*W, C, H, W) of sigmoid(z) and z by autograd's functional Jacobian."""
    work = copy.deepcopy(model).double().eval()
    x = image.detach().double().cpu()

    def logit(inputs: torch.Tensor) -> torch.Tensor:
        return work(inputs[None])[0, 0]

    with torch.no_grad():
        z = logit(x)
    n = z.numel()
    functional = torch.autograd.functional.jacobian
    return SimpleNamespace(
        logit=z,
        probability=1.0 / (1.0 + torch.exp(-z)),
        jacobian=functional(lambda v: torch.sigmoid(logit(v)), x).reshape(n, *x.shape),
        logit_jacobian=functional(logit, x).reshape(n, *x.shape),
    )


def assert_rows(rows: torch.Tensor, expected: torch.Tensor) -> None:
    """Rows within 1e-5 of the largest |value| of the expected Jacobian."""
    scale = float(expected.abs().max())
    assert scale > 0
    error = float((rows.detach().double().cpu() - expected).abs().max())
    assert error <= 1e-5 * scale, f"off by {error / scale:.2e} of max |J|"


class OneChannel(nn.Module):
    """A plain torch model as binary segmentation code writes it: one output channel."""

    def __init__(self, in_channels: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.Conv2d(6, 6, 3, padding=2, dilation=2),
            nn.Tanh(),
            nn.Conv2d(6, 1, 1),
        )

    def forward(self, x):
        return self.body(x)


class TwoClass(nn.Module):
    """The two-class model with logits (0, z): the same classifier as the one-channel one."""

    def __init__(self, one: nn.Module):
        super().__init__()
        self.one = one

    def forward(self, x):
        z = self.one(x)
        return torch.cat([torch.zeros_like(z), z], 1)


@pytest.fixture(scope="module")
def plain():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        model = OneChannel().eval()
        with torch.no_grad():  # statistics that are not the identity
            model.body[1].running_mean.uniform_(-0.2, 0.2)
            model.body[1].running_var.uniform_(0.5, 2.0)
        image = torch.rand(1, 14, 13)
        with torch.no_grad():  # about half the pixels vessel
            model.body[5].bias -= model(image[None]).median()
    return SimpleNamespace(model=model, image=image, ref=sigmoid_reference(model, image))


# ------------------------------------------------------------------------ the Python API


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("output", ["probability", "logit", "margin"])
def test_jacobian_of_a_one_channel_model(plain, strategy, output):
    engine = JacobianEngine(plain.model, plain.image, output=output, strategy=strategy)
    rows = engine.rows(torch.arange(14 * 13))
    expected = plain.ref.jacobian if output == "probability" else plain.ref.logit_jacobian
    assert engine.strategy == strategy
    assert_rows(rows, expected)
    # the probability map is the sigmoid whatever is differentiated (it was all 1.0)
    torch.testing.assert_close(
        engine.probability.double(), plain.ref.probability, rtol=0, atol=1e-6
    )


@pytest.mark.parametrize("output", ["probability", "logit", "margin"])
def test_the_two_class_model_with_logits_zero_and_z_agrees(plain, output):
    one = jacobian(plain.model, plain.image, output=output, dtype=torch.float64)
    two = jacobian(TwoClass(plain.model), plain.image, output=output, dtype=torch.float64)
    if output == "logit":  # the two-class logit of class 1 is z as well
        torch.testing.assert_close(one, two)
    else:  # softmax((0, z))_1 = sigmoid(z); z - logsumexp(0) = z
        torch.testing.assert_close(one, two, rtol=1e-9, atol=1e-12)


def test_other_target_classes_are_refused_with_one_line(plain):
    for call in (
        lambda: jacobian(plain.model, plain.image, target_class=0),
        lambda: jacobian(plain.model, plain.image, target_class=2, output="logit"),
        lambda: pixel_target(2, 3, (14, 13), target_class=0).value(plain.model(plain.image[None])),
        lambda: receptive_field_maps(plain.model, plain.image, target_class=0),
    ):
        with pytest.raises(ConfigError, match="one output channel") as caught:
            call()
        assert "\n" not in str(caught.value) and "target_class 1" in str(caught.value)


def test_targets_score_the_sigmoid(plain):
    logits = plain.ref.logit[None, None]  # (1, 1, H, W)
    mask = torch.zeros(14, 13, dtype=torch.bool)
    mask[3:6, 2:9] = True
    target = mask_target(mask)
    expected = plain.ref.probability[mask].sum()
    torch.testing.assert_close(target.value(logits)[0], expected, rtol=1e-12, atol=0)
    logit = target.with_output("logit").value(logits)[0]
    torch.testing.assert_close(logit, plain.ref.logit[mask].sum(), rtol=1e-12, atol=0)
    vessels = predicted_vessels(plain.model, plain.image)
    assert torch.equal(vessels, plain.ref.probability > 0.5)
    assert bool(vessels.any()) and not bool(vessels.all())  # the test case shows both classes


def test_attributions_explain_the_sigmoid(plain):
    row, col = 7, 6
    saliency = attribute(plain.model, plain.image, (row, col), "saliency", abs=False)
    assert_rows(saliency[None], plain.ref.jacobian[row * 13 + col][None])
    # completeness of integrated gradients: the attributions add up to p(x) - p(baseline)
    ig = attribute(plain.model, plain.image, (row, col), "integrated_gradients", n_steps=200)
    baseline = sigmoid_reference(plain.model, torch.zeros_like(plain.image))
    gap = float(plain.ref.probability[row, col] - baseline.probability[row, col])
    logit_gap = float(plain.ref.logit[row, col] - baseline.logit[row, col])
    assert abs(logit_gap - gap) > 0.5 * abs(gap)  # the check can tell the two apart
    assert float(ig.sum()) == pytest.approx(gap, rel=0.05)  # (ReLU kinks, 200 steps)


def test_sanity_checks_run_on_the_sigmoid(plain):
    row, col = 7, 6
    saliency = attribute(plain.model, plain.image, (row, col), "saliency")
    (curve,) = deletion_curves(plain.model, plain.image, (row, col), {"saliency": saliency})
    assert curve.values[0] == pytest.approx(float(plain.ref.probability[row, col]), abs=1e-6)
    assert all(0.0 <= v <= 1.0 for v in curve.values)
    result = randomisation_test(plain.model, plain.image, [(row, col)], methods=("saliency",))
    assert result.rows and all(r["target"] == f"pixel ({row}, {col})" for r in result.rows)


def test_receptive_field_maps_of_the_sigmoid(plain):
    fractions = (0.05, 0.3)
    maps = receptive_field_maps(plain.model, plain.image, fractions, "pixel", dtype=torch.float64)
    expected = receptive_field_maps_from_jacobian(
        plain.ref.jacobian.float(), fractions, "pixel", probability=plain.ref.probability.float()
    )
    assert torch.equal(maps.count, expected.count) and torch.equal(maps.bbox, expected.bbox)
    torch.testing.assert_close(maps.probability.double(), plain.ref.probability, atol=1e-6, rtol=0)
    field = receptive_field(plain.model, (14, 13), method="empirical")
    assert (field.up, field.down, field.left, field.right) == (3, 3, 3, 3)


def test_the_proof_harness_passes_a_one_channel_model(plain):
    report = check_model(plain.model, plain.image, colouring=False)
    assert report.failures == []


def test_vessel_probability_whole_tiled_and_flipped():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        pointwise = nn.Sequential(nn.Conv2d(1, 3, 1), nn.ReLU(), nn.Conv2d(3, 1, 1)).eval()
        image = torch.rand(1, 40, 37)
    expected = sigmoid_reference(pointwise, image).probability.float()
    whole = vessel_probability(pointwise, image)
    torch.testing.assert_close(whole, expected, atol=1e-6, rtol=0)
    # each pixel depends on itself only, so every window gives the same value there
    tiled = vessel_probability(pointwise, image, tile=16)
    torch.testing.assert_close(tiled, expected, atol=1e-5, rtol=0)
    flipped = vessel_probability(pointwise, image, flip_average=True)
    torch.testing.assert_close(flipped, expected, atol=1e-6, rtol=0)


def test_losses_are_binary_cross_entropy_and_dice_of_the_sigmoid():
    logits = torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]]], requires_grad=True)
    target = torch.tensor([[[1, 0], [0, 1]]])
    valid = torch.tensor([[[True, True], [False, True]]])
    p = 1 / (1 + torch.exp(-logits.detach()[0, 0]))
    y = target[0].double()
    bce = -(y * torch.log(p.double()) + (1 - y) * torch.log(1 - p.double()))
    assert float(make_loss("ce")(logits.detach(), target)) == pytest.approx(
        float(bce.mean()), rel=1e-6
    )
    inside = valid[0]
    masked = float(make_loss("ce")(logits.detach(), target, valid))
    assert masked == pytest.approx(float(bce[inside].mean()), rel=1e-6)
    pv, yv = p.double()[inside], y[inside]
    dice = 1 - (2 * (pv * yv).sum() + 1) / (pv.sum() + yv.sum() + 1)
    assert float(make_loss("dice")(logits.detach(), target, valid)) == pytest.approx(
        float(dice), rel=1e-6
    )
    both = make_loss("ce+dice")(logits, target, valid)
    assert float(both.detach()) == pytest.approx(masked + float(dice), rel=1e-6)
    both.backward()
    assert float(logits.grad[0, 0, 1, 0]) == 0.0  # outside the mask: no gradient


def test_prediction_rule_and_config():
    z = torch.tensor([[[[0.3, -0.2, 0.0]]]])
    assert predicted_vessel(z).tolist() == [[[True, False, False]]]
    two = torch.cat([torch.zeros_like(z), z], 1)
    assert torch.equal(predicted_vessel(two), predicted_vessel(z))
    torch.testing.assert_close(class_scores(two), class_scores(z))
    assert TrainConfig(num_classes=1).model_kwargs["num_classes"] == 1
    assert "num_classes" not in TrainConfig().model_kwargs  # runs from before the option resume
    with pytest.raises(ConfigError, match="num_classes 3"):
        TrainConfig(num_classes=3)


# ------------------------------------------------------------------------ the commands


@pytest.fixture(scope="module")
def k1(tmp_path_factory):
    """``resnet_seg`` with ``num_classes=1`` (seeded, untrained) and two synthetic images."""
    root = tmp_path_factory.mktemp("one-channel")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        model = create_model("resnet_seg", width=2, num_classes=1)
    kwargs = {"width": 2, "num_classes": 1}
    checkpoint = save_checkpoint(root / "k1.pt", model, "resnet_seg", kwargs)
    write_synthetic_dataset(root / "data", count=2, size=32, progress=False)
    dataset = open_dataset(str(root / "data"))
    model, _ = load_model(checkpoint)
    assert model(torch.rand(1, 1, 16, 16)).shape[1] == 1
    return SimpleNamespace(root=root, checkpoint=str(checkpoint), data=str(root / "data"),
                           model=model, samples=dataset.samples)  # fmt: skip


def cli(*args: str) -> None:
    status = main([*args])
    assert status == 0, f"vessel-lens {' '.join(args)} exited {status}"


def test_evaluate(k1, tmp_path, capsys):
    cli("evaluate", "--checkpoint", k1.checkpoint, "--data", k1.data, "--split", "all",
        "--out", str(tmp_path / "ev"), "--device", "cpu", "--no-panels")  # fmt: skip
    rows = list(csv.DictReader((tmp_path / "ev" / "per_image.csv").open()))
    assert len(rows) == 2
    for row in rows:
        sample = k1.samples[row["stem"]]
        probability = sigmoid_reference(k1.model, sample.image).probability
        counts = count_confusion(probability > 0.5, sample.label.bool())
        assert float(row["dice"]) == pytest.approx(overlap_scores(counts)["dice"], abs=1e-6)
    table = capsys.readouterr().out
    assert "cldice" in table and "auc" in table


def test_predict(k1, tmp_path):
    sample = next(iter(k1.samples.values()))
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.round(sample.image[0].numpy() * 255).astype(np.uint8)).save(images / "a.png")
    cli("predict", "--checkpoint", k1.checkpoint, "--images", str(images),
        "--out", str(tmp_path / "pred"), "--device", "cpu")  # fmt: skip
    stored = np.asarray(Image.open(tmp_path / "pred" / "a_probability.png"), dtype=np.int16)
    read = torch.from_numpy(np.asarray(Image.open(images / "a.png"), dtype=np.float32) / 255)
    reference = sigmoid_reference(k1.model, read[None])
    expected = np.round(reference.probability.numpy() * 255)
    assert np.abs(stored - expected).max() <= 1 and (stored == expected).mean() > 0.99
    mask = np.asarray(Image.open(tmp_path / "pred" / "a_mask.png")) > 0
    clear = reference.logit.abs().numpy() > 1e-4
    assert (mask == (reference.probability.numpy() > 0.5))[clear].all()


@pytest.mark.parametrize("output", ["probability", "logit"])
def test_jacobian_command(k1, tmp_path, output):
    out = tmp_path / "jac"
    cli("jacobian", "--checkpoint", k1.checkpoint, "--data", k1.data, "--split", "all",
        "--out", str(out), "--crop", "16", "--output", output, "--device", "cpu",
        "--no-progress")  # fmt: skip
    for store in sorted(out.glob("*.zarr")):
        rows, meta = load_jacobian(store)
        reference = sigmoid_reference(k1.model, meta["image"])
        expected = reference.jacobian if output == "probability" else reference.logit_jacobian
        assert_rows(rows, expected)
        # the stored probability map is the sigmoid for either output
        torch.testing.assert_close(
            meta["probability"].double(), reference.probability, atol=1e-6, rtol=0
        )


def test_a_target_class_other_than_the_vessel_is_one_error_line(k1, tmp_path, capsys):
    status = main(["jacobian", "--checkpoint", k1.checkpoint, "--data", k1.data, "--split", "all",
                   "--out", str(tmp_path / "j"), "--crop", "16", "--target-class", "0",
                   "--device", "cpu", "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "one output channel" in err[0]


def pixel_near_threshold(rows: torch.Tensor, fraction: float) -> torch.Tensor:
    """Per row: whether a magnitude lies within 1e-5 of its max from the pixel-mode threshold
    (where float32 and float64 may count differently)."""
    magnitude = gradient_magnitude(rows)
    top = magnitude.flatten(1).amax(1)[:, None, None]
    return ((magnitude - fraction * top).abs() <= 1e-5 * top).flatten(1).any(1)


def test_erf_and_erf_stats(k1, tmp_path):
    out = tmp_path / "erf"
    cli("erf", "--checkpoint", k1.checkpoint, "--data", k1.data, "--split", "all",
        "--out", str(out), "--crop", "16", "--mode", "pixel", "--fractions", "0.05,0.3",
        "--device", "cpu", "--no-figures", "--no-progress")  # fmt: skip
    vessel_pixels = {}
    for path in sorted(out.glob("*.erf.npz")):
        maps = load_receptive_field_maps(path)
        top, left, height, width = maps.metadata["crop_box"]
        stem = maps.metadata["stem"]
        image = k1.samples[stem].image[:, top : top + height, left : left + width]
        reference = sigmoid_reference(k1.model, image)
        torch.testing.assert_close(
            maps.probability.double(), reference.probability, atol=1e-6, rtol=0
        )
        expected = receptive_field_maps_from_jacobian(
            reference.jacobian.float(), (0.05, 0.3), "pixel"
        )
        for index, fraction in enumerate((0.05, 0.3)):
            clear = ~pixel_near_threshold(reference.jacobian, fraction).reshape(height, width)
            assert clear.float().mean() > 0.9
            assert torch.equal(maps.count[index][clear], expected.count[index][clear])
        vessel_pixels[stem] = int((reference.probability > 0.5).sum())
    cli("erf-stats", str(out), "--data", k1.data)
    rows = list(csv.DictReader((out / "stats" / "stats_per_image.csv").open()))
    found = {r["stem"]: int(r["pixels"]) for r in rows if r["predicted"] == "vessel"}
    assert found == {s: n for s, n in vessel_pixels.items() if n}


def test_report(k1, tmp_path):
    out = tmp_path / "report"
    cli("report", "--checkpoint", k1.checkpoint, "--data", k1.data, "--split", "all",
        "--out", str(out), "--max-images", "1", "--sanity-images", "1", "--device", "cpu",
        "--methods", "saliency", "--no-progress")  # fmt: skip
    rows = list(csv.DictReader((out / "tables" / "pixels.csv").open()))
    assert rows
    for row in rows:
        probability = sigmoid_reference(k1.model, k1.samples[row["image"]].image).probability
        assert float(row["probability"]) == pytest.approx(
            float(probability[int(row["row"]), int(row["col"])]), abs=1e-6
        )
    assert "error" not in (out / "report.html").read_text().lower().replace("errors", "")


def test_train_with_one_output_channel(tmp_path, make_dataset):
    data = make_dataset(count=4, size=(32, 32), splits={"train": ["s00", "s01"],
                        "val": ["s02"], "test": ["s03"]})  # fmt: skip
    run = tmp_path / "run"
    cli("train", "--data", str(data), "--out", str(run), "--num-classes", "1", "--width", "2",
        "--epochs", "1", "--crops-per-image", "2", "--crop-size", "16", "--batch-size", "2",
        "--device", "cpu", "--no-progress")  # fmt: skip
    model, checkpoint = load_model(run / "best.pt")
    assert checkpoint.model_kwargs["num_classes"] == 1
    # the validation numbers are the sigmoid's: BCE and Dice of p > 0.5 on the val image
    sample = open_dataset(str(data)).samples["s02"]
    reference = sigmoid_reference(model, sample.image)
    p, y = reference.probability, sample.label.double()
    bce = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
    dice = overlap_scores(count_confusion(p > 0.5, sample.label.bool()))["dice"]
    row = next(csv.DictReader((run / "metrics.csv").open()))
    assert float(row["val_loss"]) == pytest.approx(float(bce), rel=1e-4)
    assert float(row["val_dice"]) == pytest.approx(dice, abs=1e-5)


# ------------------------------------------------------------------------ the app


def test_app_views_of_a_one_channel_model(k1, tmp_path):
    pytest.importorskip("dash")
    from vessel_lens.app import handlers
    from vessel_lens.app.config import AppConfig
    from vessel_lens.app.figures import decode_typed_array
    from vessel_lens.app.layers import discover_layers, layers
    from vessel_lens.app.methods import discover_methods
    from vessel_lens.app.pixel import analyse_pixel, parse_threshold
    from vessel_lens.app.state import AppState

    discover_methods()
    discover_layers()
    stem = sorted(k1.samples)[0]
    stores = tmp_path / "stores"
    cli("jacobian", "--checkpoint", k1.checkpoint, "--data", k1.data, "--split", "all",
        "--images", stem, "--crop", "0", "--out", str(stores), "--device", "cpu",
        "--no-progress")  # fmt: skip
    config = AppConfig(checkpoints=[k1.checkpoint], data=k1.data, compare="random", erf=stores)
    state = AppState(config)
    try:
        view, _ = state.view(f"data/{stem}", "full")
        image = view.crop(state.sample(view.key).image)
        reference = sigmoid_reference(k1.model, image)
        probability = torch.from_numpy(state.probability("m0", view))
        torch.testing.assert_close(probability.double(), reference.probability, atol=1e-6, rtol=0)
        for row, col in ((3, 4), (16, 16)):
            gradient, source = state.gradient("m0", view, row, col)
            assert source == "stored"  # the store of the same model, class and output
            assert_rows(gradient[None], reference.jacobian[row * view.width + col][None])
            random_view = state.gradient("random", view, row, col)
            assert random_view[1] == "computed"
        threshold = parse_threshold(0.05, "pixel")
        for name in layers():  # (a failing layer raises; the page would show the message)
            figure = handlers.map_panel(state, view, name, threshold, "m0")
            if name in ("significant", "probability", "errors"):
                assert figure["data"], name
        figure = handlers.map_panel(state, view, "probability", threshold, "m0")
        shown = decode_typed_array(figure["data"][0]["z"])
        np.testing.assert_allclose(shown, reference.probability.numpy(), atol=1e-6)
        handlers.input_panels(state, view, ["prediction"], "m0", {"row": 3, "col": 4})
        outputs = handlers.pixel_outputs(
            state, view, (16, 16), "m0", "random", threshold, "saliency", "segment", ["bbox"]
        )
        assert len(outputs.analyses) == 2
        analysis = analyse_pixel(state, "m0", view, 16, 16, threshold)
        assert analysis.numbers()["probability"] == pytest.approx(
            float(reference.probability[16, 16]), abs=1e-6
        )
    finally:
        state.jobs.shutdown(wait=10)


def test_app_command_serves_a_one_channel_model(k1, monkeypatch, capsys):
    """``vessel-lens app`` on the checkpoint; the server is replaced by requests through
    Flask's test client: the view, the hover and the probability map answer without error."""
    pytest.importorskip("dash")
    import vessel_lens.app as app_package
    from vessel_lens.app import testing
    from vessel_lens.app.figures import decode_typed_array

    answers = {}

    class Served:
        def __init__(self, dash_app, host, port):
            self.client, self.url = dash_app.server.test_client(), f"http://{host}:{port}"
            self.state = dash_app.vessel_lens_state

        def serve_forever(self):
            client = self.client
            dependencies = client.get(testing.DEPENDENCIES).get_json()
            values = testing.layout_values(client.get(testing.LAYOUT).get_json())
            body = testing.callback_request(dependencies, "view-store.data", values)
            answer = client.post(testing.UPDATE, json=body).get_json()["response"]
            view_data = answer["view-store"]["data"]
            body = testing.pixel_request(dependencies, view_data, (10, 12))
            answers["pixel"] = client.post(testing.UPDATE, json=body).get_json()["response"]
            values.update({"view-store.data": view_data, "layer.value": "probability"})
            body = testing.callback_request(dependencies, "graph-map.figure", values)
            answers["map"] = client.post(testing.UPDATE, json=body).get_json()["response"]
            view = self.state.view(view_data["view"]["key"], "full")[0]
            answers["image"] = view.crop(self.state.sample(view.key).image)

    monkeypatch.setattr(app_package, "Server", Served)
    monkeypatch.setattr("vessel_lens.app.server.limit_malloc_arenas", lambda arenas: None)
    monkeypatch.setattr("vessel_lens.app.server.map_large_allocations", lambda: None)
    cli("app", "--checkpoint", k1.checkpoint, "--data", k1.data, "--device", "cpu")
    reference = sigmoid_reference(k1.model, answers["image"])
    pixel = answers["pixel"]
    assert pixel["message"]["children"] == ""
    gradient = decode_typed_array(pixel["graph-gradient"]["figure"]["data"][0]["z"])
    width = answers["image"].shape[-1]
    expected = reference.jacobian[10 * width + 12].sum(0)
    assert_rows(torch.from_numpy(np.array(gradient))[None], expected[None])
    shown = decode_typed_array(answers["map"]["graph-map"]["figure"]["data"][0]["z"])
    np.testing.assert_allclose(shown, reference.probability.numpy(), atol=1e-6)
    assert "vessel-lens app on" in capsys.readouterr().out
