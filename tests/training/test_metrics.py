"""Metrics against cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vessel_lens.training.losses import make_loss, regularisation, soft_dice_loss
from vessel_lens.training.metrics import (
    Confusion,
    cl_dice,
    confusion,
    image_metrics,
    overlap_scores,
    roc_auc,
)


def test_four_pixel_case_by_hand():
    # pred 1 1 0 0 / label 1 0 1 0: one of each outcome.
    pred = torch.tensor([1, 1, 0, 0], dtype=torch.bool)
    label = torch.tensor([1, 0, 1, 0], dtype=torch.bool)
    c = confusion(pred, label)
    assert (c.tp, c.fp, c.fn, c.tn) == (1, 1, 1, 1)
    s = overlap_scores(c)
    assert s["dice"] == pytest.approx(0.5)
    assert s["iou"] == pytest.approx(1 / 3)
    assert s["accuracy"] == pytest.approx(0.5)
    assert s["sensitivity"] == pytest.approx(0.5)
    assert s["specificity"] == pytest.approx(0.5)
    assert s["mcc"] == pytest.approx(0.0)


def test_second_case_by_hand():
    # pred 1 1 1 0 / label 1 1 0 0: tp 2, fp 1, fn 0, tn 1.
    s = overlap_scores(confusion(torch.tensor([1, 1, 1, 0]), torch.tensor([1, 1, 0, 0])))
    assert s["dice"] == pytest.approx(4 / 5)
    assert s["iou"] == pytest.approx(2 / 3)
    assert s["accuracy"] == pytest.approx(3 / 4)
    assert s["sensitivity"] == pytest.approx(1.0)
    assert s["specificity"] == pytest.approx(0.5)
    assert s["precision"] == pytest.approx(2 / 3)
    assert s["mcc"] == pytest.approx(2 / math.sqrt(12))


def test_empty_conventions():
    s = overlap_scores(Confusion(0, 0, 0, 9))
    assert s["dice"] == 1.0 and s["iou"] == 1.0 and s["mcc"] == 0.0
    assert s["sensitivity"] == 1.0 and s["specificity"] == 1.0


def test_confusion_sums_and_round_trip():
    a, b = Confusion(1, 2, 3, 4), Confusion(10, 20, 30, 40)
    assert a + b == Confusion(11, 22, 33, 44)
    assert Confusion.from_tensor((a + b).as_tensor()) == Confusion(11, 22, 33, 44)


def test_auc_by_hand():
    # Positives 0.35 and 0.8 beat negatives 0.1 and 0.4 in 3 of 4 pairs.
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert roc_auc([0.5, 0.5], [1, 0]) == pytest.approx(0.5)
    assert roc_auc([0.2, 0.9], [0, 1]) == pytest.approx(1.0)
    assert math.isnan(roc_auc([0.2, 0.9], [1, 1]))


def test_auc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 60) / 4.0  # many ties
    label = rng.random(60) < 0.4
    pos, neg = scores[label], scores[~label]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert roc_auc(scores, label) == pytest.approx(wins / (pos.size * neg.size))


def test_cldice_by_hand():
    label = np.zeros((11, 11), dtype=bool)
    label[4:7, 1:10] = True
    skeleton = np.zeros_like(label)
    skeleton[5, 1:10] = True  # 9 centreline pixels
    prediction = np.zeros_like(label)
    prediction[4:7, 1:5] = True  # covers 4 of them and lies inside the label
    scores = cl_dice(prediction, label, skeleton)
    assert scores["tsens"] == pytest.approx(4 / 9)
    assert scores["tprec"] == pytest.approx(1.0)
    assert scores["cldice"] == pytest.approx(8 / 13)
    assert cl_dice(label, label, skeleton)["cldice"] == pytest.approx(1.0)


def test_image_metrics_threshold_and_keys():
    probability = torch.tensor([[0.9, 0.6], [0.4, 0.1]])
    label = torch.tensor([[1, 0], [1, 0]], dtype=torch.bool)
    metrics, counts, skeleton = image_metrics(probability, label)
    assert (counts.tp, counts.fp, counts.fn, counts.tn) == (1, 1, 1, 1)
    assert skeleton is None and "cldice" not in metrics
    assert metrics["auc"] == pytest.approx(0.75)


def test_losses():
    target = torch.tensor([[[1, 0], [0, 1]]])
    perfect = torch.stack([(1 - target) * 20.0, target * 20.0], dim=1).float()
    assert soft_dice_loss(perfect, target) < 1e-6
    assert make_loss("ce+dice")(perfect, target) < 1e-6
    wrong = perfect.flip(1)
    # No overlap, 2 predicted and 2 true vessel pixels, eps = 1: 1 - (0 + 1) / (2 + 2 + 1).
    assert float(soft_dice_loss(wrong, target)) == pytest.approx(0.8, abs=1e-6)
    from vessel_lens.errors import ConfigError

    with pytest.raises(ConfigError, match="loss 'focal'"):
        make_loss("focal")


def test_regularisation_counts_conv_weights_only():
    conv = torch.nn.Conv2d(1, 1, 2, bias=True)
    with torch.no_grad():
        conv.weight.fill_(-2.0)
        conv.bias.fill_(100.0)
    model = torch.nn.Sequential(conv, torch.nn.BatchNorm2d(1))
    assert regularisation(model, "l1", 0.5).item() == pytest.approx(0.5 * 4 * 2.0)
    assert regularisation(model, "l2", 0.5).item() == pytest.approx(0.5 * 4 * 4.0)
    assert regularisation(model, "none", 1.0) is None


def test_evaluate_shows_a_missing_clDice_as_na(tmp_path, make_dataset, capsys):
    """Without skeletons clDice is undefined: its row says n/a instead of disappearing."""
    from vessel_lens.cli import main
    from vessel_lens.models import create_model, save_checkpoint

    data = make_dataset(count=2, size=(32, 32), skeletons=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = create_model("resnet_seg", width=2)
    checkpoint = save_checkpoint(tmp_path / "m.pt", model, "resnet_seg", {"width": 2})
    args = ["evaluate", "--checkpoint", str(checkpoint), "--data", str(data), "--split", "all",
            "--out", str(tmp_path / "ev"), "--device", "cpu", "--no-panels"]  # fmt: skip
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    (cldice,) = [line for line in lines if line.startswith("cldice")]
    assert cldice.split() == ["cldice", "n/a", "n/a"]
    (dice,) = [line for line in lines if line.startswith("dice")]
    assert "n/a" not in dice and len(dice.split()) == 3


def test_metrics_json_writes_an_undefined_metric_as_null(tmp_path):
    """JSON has no NaN: a pooled AUC over labels of one class is written as null."""
    import json

    from vessel_lens.training.evaluate import Evaluation, write_evaluation

    result = Evaluation(
        per_image=[{"stem": "a", "dice": 1.0, "auc": float("nan")}],
        mean={"dice": 1.0},
        pooled={"dice": 1.0, "auc": float("nan")},
    )
    text = (write_evaluation(result, tmp_path)["metrics"]).read_text()

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    payload = json.loads(text, parse_constant=refuse)
    assert payload["pooled_over_pixels"] == {"dice": 1.0, "auc": None}
