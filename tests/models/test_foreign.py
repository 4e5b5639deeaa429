"""Models from outside vessel-lens (issue 12 item 4): a factory and a state dict, TorchScript
and torch.export files. Loading, exact Jacobians for each kind, the fast path for traced
TorchScript, and every bad input as one clear line."""

from __future__ import annotations

import contextlib
import io
import shutil
import zipfile

import pytest
import torch
from torch import nn

from vessel_lens.errors import CheckpointError, ConfigError, ModelError, VesselLensError
from vessel_lens.interpret import JacobianEngine, receptive_field
from vessel_lens.interpret.attribution.methods import attribute, hides_layers
from vessel_lens.interpret.proof.check import check_model
from vessel_lens.models import create_model, load_model, save_checkpoint
from vessel_lens.models.source import ModelSource, parse_model_args

nets = pytest.importorskip("monai.networks.nets")

UNET_ARGS = {
    "spatial_dims": 2,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [4, 8, 16],
    "strides": [2, 2],
}
SIZE = 16
FACTORY_FILE = """
from monai.networks.nets import UNet
from torch import nn


def unet(channels=(4, 8, 16)):
    return UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=channels,
                strides=(2,) * (len(channels) - 1))


def not_a_module():
    return {"conv": 1}


def broken(width=1):
    raise ValueError(f"width {width} is not supported")


class FlatOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x):
        return self.conv(x).flatten(1)
"""


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text, text
    return text


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One MONAI UNet saved every way: state dicts (bare, wrapped, prefixed), a vessel-lens
    checkpoint of the wrong model, TorchScript (scripted, traced), torch.export."""
    root = tmp_path_factory.mktemp("foreign")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = nets.UNet(**UNET_ARGS).eval()
    example = torch.rand(1, 1, SIZE, SIZE)
    state = unet.state_dict()
    paths = {name: root / name for name in ("bare.pt", "wrapped.pt", "lightning.pt", "dp.pt")}
    torch.save(state, paths["bare.pt"])
    torch.save({"state_dict": state, "epoch": 3}, paths["wrapped.pt"])
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}}, paths["lightning.pt"])
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, paths["dp.pt"])
    other = create_model("resnet_seg", width=1, in_channels=1)
    paths["registry.pt"] = save_checkpoint(root / "registry.pt", other, "resnet_seg", {"width": 1})
    paths["scripted.pt"] = root / "scripted.pt"
    torch.jit.script(unet).save(str(paths["scripted.pt"]))
    paths["traced.pt"] = root / "traced.pt"
    torch.jit.trace(unet, example).save(str(paths["traced.pt"]))
    paths["exported.pt2"] = root / "exported.pt2"
    torch.export.save(torch.export.export(unet, (example,)), str(paths["exported.pt2"]))
    batch = torch.export.Dim("batch", max=64)
    side = torch.export.Dim("side", min=2, max=64)
    dynamic = torch.export.export(  # a batch of 2: an example batch of 1 would fix it at 1
        unet,
        (example.expand(2, -1, -1, -1),),
        dynamic_shapes={"x": {0: batch, 2: 4 * side, 3: 4 * side}},
    )
    paths["dynamic.pt2"] = root / "dynamic.pt2"
    torch.export.save(dynamic, str(paths["dynamic.pt2"]))
    factory = root / "factories.py"
    factory.write_text(FACTORY_FILE)
    paths["factories.py"] = factory
    return unet, paths


def reference_rows(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """d softmax(model)[1] / d image for every output pixel, by autograd: (H·W, C, H, W)."""

    def probability(x):
        return model(x[None]).softmax(1)[0, 1].reshape(-1)

    rows = torch.autograd.functional.jacobian(probability, image)
    return rows.reshape(image.shape[-2] * image.shape[-1], *image.shape)


KINDS = {
    "factory module": lambda p: {"model": "monai.networks.nets:UNet", "weights": p["bare.pt"]},
    "factory file": lambda p: {"model": f"{p['factories.py']}:unet", "weights": p["bare.pt"]},
    "TorchScript scripted": lambda p: {"spec": p["scripted.pt"]},
    "TorchScript traced": lambda p: {"spec": p["traced.pt"]},
    "torch.export": lambda p: {"spec": p["exported.pt2"]},
}


def load(kind: str, paths) -> tuple[nn.Module, object]:
    options = KINDS[kind](paths)
    spec = options.pop("spec", None)
    if options.get("model") == "monai.networks.nets:UNet":
        options["model_args"] = UNET_ARGS
    return load_model(spec, **options)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("strategy", ["auto", "linear", "vmap"])
def test_jacobian_rows_are_exact_for_every_kind_of_model(files, kind, strategy):
    unet, paths = files
    model, record = load(kind, paths)
    assert not model.training and record.in_channels == 1 and record.metadata == {}
    image = torch.rand(1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    expected = reference_rows(unet, image)
    engine = JacobianEngine(model, image, strategy=strategy)
    assert engine.strategy == ("linear" if strategy == "auto" else strategy), engine.fallback
    rows = engine.rows(torch.arange(SIZE * SIZE))
    scale = float(expected.abs().max())
    assert float((rows - expected).abs().max()) <= 1e-5 * scale


def test_weights_hashes_name_the_weights_not_the_way_they_were_given(files):
    from vessel_lens.interpret.provenance import weights_hash

    _, paths = files
    hashes = set()
    for name in ("bare.pt", "wrapped.pt", "lightning.pt", "dp.pt"):
        _, record = load_model(
            model="monai.networks.nets:UNet", model_args=UNET_ARGS, weights=paths[name]
        )
        assert record.model_name == "monai.networks.nets:UNet"
        assert record.model_kwargs == UNET_ARGS and record.path == paths[name]
        hashes.add(weights_hash(record.state_dict))
    assert len(hashes) == 1
    for name in ("scripted.pt", "traced.pt", "exported.pt2"):
        _, record = load_model(paths[name])
        assert weights_hash(record.state_dict) in hashes, name


def test_the_format_is_read_from_the_file_not_its_name(files, tmp_path):
    _, paths = files
    for name, kind in (("scripted.pt", "TorchScript"), ("exported.pt2", "torch.export")):
        renamed = tmp_path / f"{name}.bin"
        shutil.copy(paths[name], renamed)
        _, record = load_model(renamed)
        assert record.kind == kind


def test_traced_torchscript_gets_the_exact_linear_path_by_the_proof_harness(files, tmp_path):
    """Traced TorchScript calls aten._convolution (not aten.convolution): recorded as the
    convolution it computes, the linear strategy and the structural field accept it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        small = nets.UNet(
            spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,)
        ).eval()
    image = torch.rand(1, 12, 12, generator=torch.Generator().manual_seed(3))
    torch.jit.trace(small, image[None]).save(str(tmp_path / "small.pt"))
    model, _ = load_model(tmp_path / "small.pt")
    report = check_model(model, image, colouring=False)
    assert report.failures == []
    assert isinstance(report.errors["linear"], float) and report.errors["linear"] <= 1e-5
    assert report.tight


def test_structural_field_reads_in_channels_from_the_weights(files):
    unet, paths = files
    expected = receptive_field(unet, SIZE)
    for name in ("scripted.pt", "traced.pt", "exported.pt2"):
        model, _ = load_model(paths[name])
        field = receptive_field(model, SIZE)  # no in_channels: no Conv2d module to read
        assert field.tight and torch.equal(field.boxes, expected.boxes), name


def test_exported_programs_keep_their_mode_and_check_their_input_shape(files):
    _, paths = files
    model, record = load_model(paths["exported.pt2"])
    model.train()
    model.eval()  # would raise NotImplementedError on the program itself
    assert record.in_channels == 1
    batch = torch.rand(3, 1, SIZE, SIZE)
    assert model(batch).shape == (3, 2, SIZE, SIZE)  # exported for one image: one at a time
    with pytest.raises(ModelError) as info:
        model(torch.rand(1, 1, 2 * SIZE, 2 * SIZE))
    text = one_line(info.value)
    assert "(1, 1, 16, 16)" in text and "(1, 1, 32, 32)" in text and "torch.export.Dim" in text
    dynamic, _ = load_model(paths["dynamic.pt2"])
    assert dynamic(torch.rand(3, 1, 24, 24)).shape == (3, 2, 24, 24)
    with pytest.raises(ModelError, match="failed on a \\(1, 1, 30, 30\\) input"):
        dynamic(torch.rand(1, 1, 30, 30))


def test_programs_leave_out_the_methods_that_need_layers(files):
    _, paths = files
    image = torch.rand(1, SIZE, SIZE)
    for name in ("scripted.pt", "exported.pt2"):
        model, _ = load_model(paths[name])
        assert hides_layers(model)
        assert attribute(model, image, (5, 5), "saliency").shape == (1, SIZE, SIZE)
        for method in ("guided_backprop", "layer_gradcam"):
            with pytest.raises(ConfigError, match=f"method {method}: needs the model's layers"):
                attribute(model, image, (5, 5), method)
    model, _ = load("factory file", paths)
    assert not hides_layers(model)
    assert attribute(model, image, (5, 5), "layer_gradcam").shape == (1, SIZE, SIZE)


def test_a_factory_without_weights_keeps_its_own_and_says_so(files):
    _, paths = files
    with pytest.warns(UserWarning, match="without --weights"):
        model, record = load_model(model=f"{paths['factories.py']}:unet")
    assert record.path is None and set(record.state_dict) == set(model.model.state_dict())
    fresh = record.random_init(seed=0)
    again = record.random_init(seed=0)
    for a, b in zip(fresh.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)


def test_records_rebuild_their_model(files):
    _, paths = files
    image = torch.rand(1, 1, SIZE, SIZE)
    for kind in ("factory file", "TorchScript traced", "torch.export"):
        model, record = load(kind, paths)
        again = record.build()
        assert again is not model and not again.training
        assert torch.equal(again(image), model(image)), kind


def test_program_files_are_not_checkpoints_to_train_from(files):
    from vessel_lens.models import read_checkpoint

    _, paths = files
    for name, kind in (("scripted.pt", "TorchScript"), ("exported.pt2", "torch.export")):
        with pytest.raises(CheckpointError) as info:
            read_checkpoint(paths[name])  # what train --resume reads
        assert f"is a {kind} file, not a vessel-lens checkpoint" in one_line(info.value)


def test_randomisation_stages_look_into_wrappers_and_programs(files):
    """The sanity checks' stages: a model whose parameters all lie in one child (the wrapper
    of a foreign model, MONAI's UNet) is looked into; programs, whose stages cannot be seen
    being called, get the definition order."""
    from vessel_lens.interpret.attribution.sanity import parameter_stages

    unet, paths = files
    image = torch.rand(1, SIZE, SIZE)
    assert parameter_stages(unet, image) == ["model.0", "model.1", "model.2"]
    for kind in ("factory file", "TorchScript scripted", "torch.export"):
        model, _ = load(kind, paths)
        assert parameter_stages(model, image) == ["model.model.0", "model.model.1", "model.model.2"]


def test_load_model_of_a_checkpoint_works_as_before(files):
    _, paths = files
    model, record = load_model(paths["registry.pt"])
    assert type(record).__name__ == "Checkpoint" and record.model_name == "resnet_seg"
    assert record.in_channels == 1 and not model.training


# -- bad inputs: one clear line each ----------------------------------------------------------


def bad_cases(paths) -> list[tuple[str, dict, type, str]]:
    factory = paths["factories.py"]
    unet = {"model": "monai.networks.nets:UNet", "model_args": UNET_ARGS}
    wide = {**UNET_ARGS, "channels": [8, 8, 16]}
    return [
        ("module missing", {"model": "no_such_package.nets:UNet"}, ConfigError, "no module named 'no_such_package.nets'"),
        ("attribute missing", {"model": "monai.networks.nets:NoSuchNet"}, ConfigError, "has no attribute 'NoSuchNet'"),
        ("file missing", {"model": "missing/models.py:unet"}, ConfigError, "file missing/models.py not found"),
        ("no colon", {"model": "monai.networks.nets.UNet"}, ConfigError, "expected package.module:factory"),
        ("not a module", {"model": f"{factory}:not_a_module"}, ConfigError, "returned a dict, not a torch.nn.Module"),
        ("factory raises", {"model": f"{factory}:broken", "model_args": {"width": 3}}, ConfigError, "ValueError: width 3 is not supported"),
        ("bad arguments", {"model": f"{factory}:unet", "model_args": {"depth": 3}}, ConfigError, "unexpected keyword argument 'depth'"),
        ("missing keys", {**unet, "weights": paths["registry.pt"]}, CheckpointError, "weights do not fit monai.networks.nets:UNet"),
        ("wrong shapes", {"model": "monai.networks.nets:UNet", "model_args": wide, "weights": paths["bare.pt"]}, CheckpointError, "in the file but (8, 1, 3, 3) in the model"),
        ("weights missing", {**unet, "weights": paths["bare.pt"].with_name("nothing.pt")}, CheckpointError, "weights file not found"),
        ("program as weights", {**unet, "weights": paths["scripted.pt"]}, CheckpointError, "is a TorchScript file, which holds its own model"),
        ("weights without model", {"weights": paths["bare.pt"]}, ConfigError, "--weights"),
        ("model and checkpoint", {"spec": paths["registry.pt"], **unet}, ConfigError, "--model and --checkpoint exclude each other"),
        ("nothing", {}, ConfigError, "give --checkpoint"),
    ]  # fmt: skip


def test_bad_inputs_are_one_clear_line(files):
    _, paths = files
    for name, options, error, text in bad_cases(paths):
        options = dict(options)
        spec = options.pop("spec", None)
        with pytest.raises(error) as info:
            load_model(spec, **options)
        assert text in one_line(info.value), (name, str(info.value))


def test_unexpected_weights_are_named(files, tmp_path):
    unet, _ = files
    state = {**unet.state_dict(), "extra.weight": torch.zeros(2)}
    torch.save(state, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError) as info:
        load_model(
            model="monai.networks.nets:UNet", model_args=UNET_ARGS, weights=tmp_path / "extra.pt"
        )
    assert "1 tensor(s) unexpected (first 'extra.weight')" in one_line(info.value)
    broken = dict(unet.state_dict())
    name = next(iter(broken))
    broken[name] = torch.full_like(broken[name], float("nan"))
    torch.save(broken, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match="NaN or inf"):
        load_model(
            model="monai.networks.nets:UNet", model_args=UNET_ARGS, weights=tmp_path / "nan.pt"
        )


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_weights_with_an_unsafe_pickle_are_refused_unrun(files, tmp_path, capsys):
    unet, _ = files
    path = tmp_path / "unsafe.pt"
    torch.save({"state_dict": unet.state_dict(), "hook": _Payload()}, path)
    with pytest.raises(CheckpointError) as info:
        load_model(model="monai.networks.nets:UNet", model_args=UNET_ARGS, weights=path)
    assert "refused to load: unsafe" in one_line(info.value)
    assert "this must never run" not in capsys.readouterr().out


def test_an_exported_file_with_a_pickled_payload_is_refused_unrun(files, tmp_path, capsys):
    """torch.export.load unpickles sample inputs with Python's full unpickler when the
    weights-only one refuses them: vessel-lens checks them first."""
    _, paths = files
    source, target = paths["exported.pt2"], tmp_path / "evil.pt2"
    payload = io.BytesIO()
    torch.save(_Payload(), payload)
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            data = old.read(info)
            if "/data/sample_inputs/" in info.filename:
                data = payload.getvalue()
            new.writestr(info, data)
    with pytest.raises(CheckpointError) as info:
        load_model(target)
    assert "refused to load: unsafe" in one_line(info.value)
    assert "this must never run" not in capsys.readouterr().out


def test_models_with_the_wrong_output_are_one_clear_line(files, tmp_path):
    _, paths = files
    flat = torch.jit.script(
        nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(1))
    )  # (B, 2·H·W)
    flat.save(str(tmp_path / "flat.pt"))
    image = torch.rand(1, SIZE, SIZE)
    for spec, options in (
        (tmp_path / "flat.pt", {}),
        (None, {"model": f"{paths['factories.py']}:FlatOutput"}),
    ):
        with pytest.warns(UserWarning) if options else contextlib.nullcontext():
            model, _ = load_model(spec, **options)
        with pytest.raises(ModelError) as info:
            JacobianEngine(model, image)
        text = one_line(info.value)
        assert "returned a (1, 512) tensor for a (1, 1, 16, 16) input" in text
        assert "(B, K, H, W) class logits" in text
    model, _ = load_model(paths["scripted.pt"])
    with pytest.raises(ModelError) as info:
        model(torch.rand(1, 1, 18, 18))  # the U-Net's skips need sides divisible by 4
    assert "scripted.pt: failed on a (1, 1, 18, 18) input: RuntimeError: Sizes" in one_line(
        info.value
    )


def test_model_options_are_checked_before_any_work():
    assert parse_model_args(None) is None
    assert parse_model_args('{"channels": [4, 8]}') == {"channels": [4, 8]}
    for text, message in (("{channels: 4}", "not valid JSON"), ("[1, 2]", "JSON object")):
        with pytest.raises(ConfigError, match=message) as info:
            parse_model_args(text)
        one_line(info.value)
    with pytest.raises(ConfigError, match="--model-args: needs --model"):
        ModelSource("vessmap-w16", model_args={"a": 1})
    source = ModelSource(None, "m.py:f", {"width": 2}, "w b.pt")
    assert source.options == """--model m.py:f --model-args '{"width": 2}' --weights 'w b.pt'"""
    assert issubclass(ModelError, VesselLensError)
