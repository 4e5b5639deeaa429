"""Metrics, evaluation and the training loss restricted to a field-of-view mask."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vessel_lens.cli import main
from vessel_lens.data.samples import Sample
from vessel_lens.training.evaluate import evaluate_model
from vessel_lens.training.losses import make_loss
from vessel_lens.training.metrics import confusion, image_metrics, overlap_scores, roc_auc


def scene(seed: int = 0, shape: tuple[int, int] = (24, 30)):
    """Probability, label, skeleton and a mask (left two thirds) of a random image."""
    rng = np.random.default_rng(seed)
    probability = torch.from_numpy(rng.random(shape).astype(np.float32))
    label = torch.zeros(shape, dtype=torch.bool)
    label[5:10, :] = True
    label[:, 12:15] = True
    skeleton = torch.zeros(shape, dtype=torch.bool)
    skeleton[7, :] = True
    skeleton[:, 13] = True
    probability = torch.where(label, 0.3 + 0.7 * probability, 0.7 * probability)
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[:, : 2 * shape[1] // 3] = True
    return probability, label, skeleton, mask


def test_masked_metrics_count_only_pixels_inside():
    probability, label, skeleton, mask = scene()
    metrics, counts, _ = image_metrics(probability, label, skeleton, mask=mask)
    inside = confusion(probability[mask] > 0.5, label[mask])
    assert counts == inside
    assert counts.tp + counts.fp + counts.fn + counts.tn == int(mask.sum())
    for name, value in overlap_scores(inside).items():
        assert metrics[name] == pytest.approx(value)
    assert metrics["auc"] == pytest.approx(roc_auc(probability[mask], label[mask]))
    unmasked, _, _ = image_metrics(probability, label, skeleton)
    assert metrics["dice"] != pytest.approx(unmasked["dice"])


def test_masked_metrics_ignore_everything_outside_the_mask():
    probability, label, skeleton, mask = scene()
    before, _, hits = image_metrics(probability, label, skeleton, mask=mask)
    rng = np.random.default_rng(5)
    outside = ~mask
    probability = probability.clone()
    probability[outside] = torch.from_numpy(rng.random(int(outside.sum())).astype(np.float32))
    label, skeleton = label.clone(), skeleton.clone()
    label[outside] = torch.from_numpy(rng.random(int(outside.sum())) > 0.5)
    skeleton[outside] = label[outside]
    after, _, hits_after = image_metrics(probability, label, skeleton, mask=mask)
    assert after == pytest.approx(before)
    assert hits_after == hits


def test_masked_cldice_uses_the_parts_inside():
    probability, label, skeleton, mask = scene()
    *_, hits = image_metrics(probability, label, skeleton, mask=mask)
    # the label's centreline inside the mask: row 7 over 20 columns and column 13, 24 rows,
    # sharing one pixel
    assert hits.label_skeleton == 20 + 24 - 1


class Threshold(nn.Module):
    """Predicts vessel exactly where the image is brighter than 0.5."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        vessel = 40 * (x[:, 0] - 0.5) + 0 * self.anchor
        return torch.stack([torch.zeros_like(vessel), vessel], 1)


def masked_samples() -> list[Sample]:
    samples = []
    for i in range(2):
        label = torch.zeros(20, 26, dtype=torch.bool)
        label[6 + i : 10 + i, 2:20] = True
        image = label.float()[None] * 0.8 + 0.1
        image[0, :, 21:] = 0.9  # false positives, all outside the mask
        mask = torch.ones(20, 26, dtype=torch.bool)
        mask[:, 21:] = False
        samples.append(Sample(f"m{i}", image, label, None, None, mask))
    return samples


def test_evaluation_pooled_and_per_image_inside_the_mask(tmp_path):
    samples = masked_samples()
    result = evaluate_model(Threshold(), samples, "cpu", panels=tmp_path, progress=False)
    assert result.pooled["dice"] == pytest.approx(1.0)
    assert result.pooled["auc"] == pytest.approx(1.0)
    assert [row["dice"] for row in result.per_image] == pytest.approx([1.0, 1.0])
    assert result.mean["precision"] == pytest.approx(1.0)
    assert len(list(tmp_path.glob("*.png"))) == 2
    unmasked = [Sample(s.stem, s.image, s.label) for s in samples]
    plain = evaluate_model(Threshold(), unmasked, "cpu", progress=False)
    assert plain.pooled["precision"] < 0.75


def test_masked_loss_ignores_pixels_outside_and_their_gradients():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 8, 9, requires_grad=True)
    target = torch.randint(0, 2, (2, 8, 9))
    valid = torch.rand(2, 8, 9) > 0.4
    for name in ("ce", "dice", "ce+dice"):
        loss = make_loss(name)
        value = loss(logits, target, valid)
        (grad,) = torch.autograd.grad(value, logits)
        value = value.detach()
        assert float(grad.abs().sum(1)[~valid].max()) == 0.0
        assert float(grad.abs().sum(1)[valid].max()) > 0.0
        changed = target.clone()
        changed[~valid] = 1 - changed[~valid]
        again = loss(logits, changed, valid).detach()
        assert float(again) == pytest.approx(float(value), abs=1e-6)
    with torch.no_grad():
        ce = make_loss("ce")(logits, target, valid)
        by_hand = F.cross_entropy(logits.permute(0, 2, 3, 1)[valid], target[valid])
        assert float(ce) == pytest.approx(float(by_hand), abs=1e-6)
        plain = make_loss("ce")(logits, target)
        assert float(plain) == pytest.approx(float(F.cross_entropy(logits, target)), abs=1e-6)


def test_masked_loss_of_a_crop_wholly_outside_is_zero_not_nan():
    logits = torch.randn(1, 2, 4, 4, requires_grad=True)
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    nothing = torch.zeros(1, 4, 4, dtype=torch.bool)
    for name in ("ce", "dice", "ce+dice"):
        value = make_loss(name)(logits, target, nothing)
        assert torch.isfinite(value)
        (grad,) = torch.autograd.grad(value, logits)
        assert float(grad.abs().max()) == 0.0


def test_evaluate_cli_records_that_masks_were_used(make_dataset, tmp_path, capsys):
    root = make_dataset(count=3, size=(32, 40), masks=True)
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", "vessmap-w16", "--data", str(root), "--split",
                 "all", "--out", str(out), "--no-panels", "--device", "cpu"]) == 0  # fmt: skip
    assert "inside the field-of-view masks" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["masks"] is True


def tiny_run(data, out, **overrides):
    from vessel_lens.training import TrainConfig, train

    values = dict(data=str(data), width=4, epochs=1, crops_per_image=2, batch_size=4,
                  crop_size=16, schedule="constant", device="cpu")  # fmt: skip
    values.update(overrides)
    return train(TrainConfig(**values), out, progress=False)


def test_training_ignores_labels_outside_the_mask_and_records_it(make_dataset, tmp_path):
    from vessel_lens.data.io import read_raw
    from vessel_lens.models import read_checkpoint
    from vessel_lens.training.config import read_config

    first = make_dataset("a", count=4, size=(24, 30), masks=True)
    second = make_dataset("b", count=4, size=(24, 30), masks=True)
    for path in (second / "labels").iterdir():  # other labels, outside the masks only
        label, mask = read_raw(path).copy(), read_raw(second / "masks" / path.name)
        label[mask == 0] = 255 - label[mask == 0]
        Image.fromarray(label).save(path)
    # the runs go beside the datasets: a folder holding a dataset is no run folder
    tiny_run(first, tmp_path / "run-a")
    tiny_run(second, tmp_path / "run-b")
    a, b = (read_checkpoint(tmp_path / f"run-{run}" / "last.pt") for run in "ab")
    for key, value in a.state_dict.items():
        assert torch.equal(value, b.state_dict[key]), key
    assert read_config(tmp_path / "run-a" / "config.yaml")["mask_loss"] is True
    assert a.metadata["masks"] == {"dataset": True, "loss": True}
    assert a.metadata["config"]["mask_loss"] is True
    tiny_run(second, tmp_path / "run-c", mask_loss=False)
    c = read_checkpoint(tmp_path / "run-c" / "last.pt")
    assert c.metadata["masks"] == {"dataset": True, "loss": False}
    assert read_config(tmp_path / "run-c" / "config.yaml")["mask_loss"] is False
    assert any(not torch.equal(v, c.state_dict[k]) for k, v in b.state_dict.items())


def test_mask_loss_without_masks_is_one_line(make_dataset, tmp_path, capsys):
    root = make_dataset(count=3)
    args = ["train", "--data", str(root), "--out", str(tmp_path / "run"), "--mask-loss",
            "--epochs", "1", "--width", "4", "--crop-size", "16", "--device", "cpu"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --mask-loss: {root} has no field-of-view masks"]
    tiny_run(root, tmp_path / "plain")
    from vessel_lens.models import read_checkpoint

    assert read_checkpoint(tmp_path / "plain" / "last.pt").metadata["masks"] == {
        "dataset": False,
        "loss": False,
    }
