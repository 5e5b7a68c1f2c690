"""The model zoo: exact shapes, the registry, `cnnbench models` / `summary`, local weights."""

from __future__ import annotations

import logging
import re

import pytest
import torch
import torchvision.models as tvm
from conftest import REPO
from omegaconf import OmegaConf
from torch import nn

from cnnbench.commands.models import format_table, zoo_rows
from cnnbench.config import ModelConfig, SGDConfig
from cnnbench.errors import CnnbenchError
from cnnbench.models import (
    apply_weights,
    check_input_size,
    count_params,
    create_model,
    get_model_info,
    model_names,
    register_model,
    registered_models,
)
from cnnbench.models.registry import transforms_presets_for
from cnnbench.models.weights import load_state
from cnnbench.optim import build_optimizer

# Parameters at each model's default classes: SPEC.md's table, and torchvision's documented
# counts for the VGG variants and ResNet-18 that SPEC.md lists by name only.
PARAMS = {
    "lenet5": 61_706,
    "lenet_224": 46_038_242,
    "alexnet_original": 62_378_344,
    "alexnet": 61_100_840,
    "alexnet_512": 42_321_218,
    "alexnet_cifar": 58_292_074,
    "small_alexnet": 12_417_098,
    "vgg11": 132_863_336,
    "vgg11_bn": 132_868_840,
    "vgg13": 133_047_848,
    "vgg13_bn": 133_053_736,
    "vgg16": 138_357_544,
    "vgg16_bn": 138_365_992,
    "vgg19": 143_667_240,
    "vgg19_bn": 143_678_248,
    "resnet18": 11_689_512,
    "fastnet": 295_480,  # cnnbench's fast recipe (not in SPEC.md)
}
NATIVE = {
    "lenet5": ((1, 32, 32), 10),
    "lenet_224": ((3, 224, 224), 2),
    "alexnet_original": ((3, 227, 227), 1000),
    "alexnet": ((3, 224, 224), 1000),
    "alexnet_512": ((3, 256, 256), 2),
    "alexnet_cifar": ((3, 32, 32), 10),
    "small_alexnet": ((3, 32, 32), 10),
    **{name: ((3, 224, 224), 1000) for name in PARAMS if name.startswith("vgg")},
    "resnet18": ((3, 224, 224), 1000),
    "fastnet": ((3, 32, 32), 10),
}
TORCHVISION = ["alexnet", *(n for n in PARAMS if n.startswith("vgg")), "resnet18"]
REAL_FORWARD = {
    "lenet5",
    "lenet_224",
    "alexnet_cifar",
    "small_alexnet",
    "alexnet_original",
    "fastnet",
}
ALEXNET_HEAD = [nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU, nn.Linear]
FAKE = [
    "dataset=fake",
    "dataset.size=64",
    "epochs=1",
    "batch_size=7",
    "device=cpu",
    "progress=false",
]


def meta_model(name: str, *args: int) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, *args)


def model_cfg(name: str, weights=None, freeze: bool = False):
    return OmegaConf.structured(ModelConfig(name=name, weights=weights, freeze_features=freeze))


def shapes(state: dict) -> dict:
    return {k: tuple(v.shape) for k, v in state.items()}


# ---- architectures --------------------------------------------------------------------------


def test_registry_holds_every_model_of_the_spec_in_family_order():
    assert [info.name for info in registered_models()] == list(PARAMS)
    assert set(PARAMS) <= set(model_names())  # with torchvision's (test_catalog.py)


@pytest.mark.parametrize("name", list(PARAMS))
def test_param_counts_and_native_sizes_match_the_spec(name):
    info = get_model_info(name)
    assert (info.input_size, info.num_classes) == NATIVE[name]
    assert count_params(meta_model(name)) == PARAMS[name]


@pytest.mark.parametrize("name", list(PARAMS))
def test_forward_on_the_native_input_gives_logits(name):
    (c, h, w), classes = NATIVE[name]
    if name in REAL_FORWARD:
        torch.manual_seed(0)
        model = create_model(name).eval()
        with torch.no_grad():
            out = model(torch.randn(2, c, h, w))
        assert out.shape == (2, classes) and torch.isfinite(out).all()
        assert not torch.allclose(out.sum(1), torch.ones(2))  # not probabilities
    else:  # big ones: shapes only, no memory, no FLOPs
        with torch.device("meta"):
            out = create_model(name)(torch.empty(2, c, h, w))
        assert out.shape == (2, classes)
    model = meta_model(name)
    assert not any(isinstance(m, (nn.Softmax, nn.LogSoftmax)) for m in model.modules())


def test_resnet18_real_forward_and_overrides_of_channels_and_classes():
    torch.manual_seed(0)
    model = create_model("resnet18", 7, 1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 64, 64)).shape == (2, 7)
    assert model.conv1.weight.shape == (64, 1, 7, 7)
    vgg = meta_model("vgg11_bn", 5, 1)
    assert vgg.features[0].weight.shape == (64, 1, 3, 3) and vgg.classifier[6].out_features == 5
    assert meta_model("lenet5", 10, 3).features[0].weight.shape == (6, 3, 5, 5)
    assert count_params(create_model("lenet5", 10, 3)) == 62_006  # SPEC: 3 ch, 10 classes


@pytest.mark.parametrize("name", ["alexnet_original", "alexnet", "alexnet_512", "small_alexnet"])
def test_dropout_comes_before_the_first_two_linear_layers(name):
    assert [type(m) for m in meta_model(name).classifier] == ALEXNET_HEAD


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", TORCHVISION)
def test_state_dict_keys_and_shapes_are_torchvision_s(name):
    with torch.device("meta"):
        theirs = getattr(tvm, name)(weights=None).state_dict()
    assert shapes(meta_model(name).state_dict()) == shapes(theirs)
    assert get_model_info(name).torchvision == name


# ---- registry and input sizes ---------------------------------------------------------------


def test_unknown_model_names_every_valid_one():
    with pytest.raises(CnnbenchError) as err:
        create_model("alexnett")
    assert str(err.value) == (
        f"unknown model 'alexnett'; valid models: {', '.join(model_names())} (did you mean "
        "alexnet / alexnet_512 / lenet5?); `cnnbench models --all` describes them, model=timm "
        "model.arch=NAME builds timm's"
    )


def test_registering_a_name_twice_is_an_error():
    before = get_model_info("vgg11")
    with pytest.raises(ValueError, match="model 'vgg11' is registered twice"):
        register_model("vgg11", input_size=(3, 8, 8), num_classes=2, source="x")(lambda **kw: None)
    assert get_model_info("vgg11") is before


def test_input_size_error_names_the_expected_size_and_the_resize():
    model = create_model("alexnet_original", 10)
    with pytest.raises(CnnbenchError) as err:
        check_input_size("alexnet_original", model, (3, 32, 32), torch.device("cpu"))
    msg = str(err.value)
    assert msg.startswith(
        "model 'alexnet_original' cannot take 3x32x32 images: it expects 3x227x227"
    )
    assert "Resize the input with transforms.resize=227" in msg
    check_input_size("alexnet_original", model, (3, 227, 227), torch.device("cpu"))  # fits
    assert model.training  # the check leaves the mode as it was


def test_input_size_error_for_channels_names_model_in_channels():
    model = create_model("lenet5", 10, 3)
    with pytest.raises(CnnbenchError, match=r"built for 3-channel images but the data has 1 ch"):
        check_input_size("lenet5", model, (1, 32, 32), torch.device("cpu"))


def test_transforms_presets_that_fit_a_size(tmp_path):
    (tmp_path / "imagenet227.yaml").write_text("name: imagenet227\nresize: 256\n")
    (tmp_path / "resize.yaml").write_text("name: resize\nresize: 224\n")
    (tmp_path / "center.yaml").write_text("name: center\nresize: 256\ncrop: 224\n")
    (tmp_path / "notes.txt").write_text("crop: 227")
    assert transforms_presets_for(227, tmp_path) == ["imagenet227"]
    assert transforms_presets_for(224, tmp_path) == ["center", "resize"]
    assert transforms_presets_for(32, tmp_path) == []


def test_train_on_images_too_small_stops_before_training(cli, tmp_path):
    proc = cli("train", "model=alexnet_original", *FAKE, "hydra.run.dir=run", check=False)
    assert proc.returncode == 1
    assert proc.stderr.count("error:") == 1 and "Traceback" not in proc.stderr
    assert (
        "model 'alexnet_original' cannot take 3x32x32 images: it expects 3x227x227" in proc.stderr
    )
    assert "transforms.resize=227" in proc.stderr
    assert "[Training]" not in proc.stdout and not (tmp_path / "run" / "best.pt").exists()


# ---- commands -------------------------------------------------------------------------------


def test_models_command_lists_every_model(cli):
    out = cli("models").stdout.splitlines()
    assert out[0].split() == ["name", "params", "input", "classes", "source"]
    rows = {line.split()[0]: line.split() for line in out[1:]}
    assert list(rows) == list(PARAMS)
    for name, cells in rows.items():
        (c, h, w), classes = NATIVE[name]
        assert cells[1:4] == [f"{PARAMS[name]:,}", f"{c}x{h}x{w}", str(classes)]
    assert "seed 001" in " ".join(rows["alexnet_original"]) and "seed 002" in " ".join(
        rows["small_alexnet"]
    )


def test_readme_zoo_table_is_the_models_command_output():
    readme = (REPO / "README.md").read_text()
    assert format_table(zoo_rows(), markdown=True) in readme
    assert readme.index("## Model zoo") < readme.index("## Development")


def layer_rows(table: str) -> list[tuple[str, str, str]]:
    """(layer, output shape, params) rows of a torchsummary table."""
    return re.findall(r"^\s*(\w+-\d+)\s+(\[[-\d, ]+\])\s+([\d,]+)$", table, re.M)


def test_summary_of_alexnet_original_is_seed_001_s_table(cli):
    out = cli("summary", "model=alexnet_original").stdout
    assert out.startswith(
        "alexnet_original: 62,378,344 parameters, 1000 classes, input 3x227x227 (native size), on cpu"
    )
    rows = layer_rows(out)
    assert len(rows) == 20
    assert rows[0] == ("Conv2d-1", "[-1, 96, 55, 55]", "34,944")
    assert rows[12] == ("MaxPool2d-13", "[-1, 256, 6, 6]", "0")
    assert rows[14] == ("Linear-15", "[-1, 4096]", "37,752,832")
    assert rows[-1] == ("Linear-20", "[-1, 1000]", "4,097,000")
    assert "Total params: 62,378,344" in out


def test_summary_of_small_alexnet_is_seed_002_s_table(cli):
    out = cli("summary", "model=small_alexnet").stdout
    expected = [
        ("Conv2d-1", "[-1, 64, 26, 26]", "9,472"),
        ("Conv2d-3", "[-1, 192, 26, 26]", "307,392"),
        ("MaxPool2d-5", "[-1, 192, 12, 12]", "0"),
        ("Conv2d-10", "[-1, 128, 12, 12]", "295,040"),
        ("MaxPool2d-12", "[-1, 128, 5, 5]", "0"),
        ("Linear-14", "[-1, 2048]", "6,555,648"),
        ("Linear-19", "[-1, 10]", "20,490"),
    ]
    rows = layer_rows(out)
    assert all(row in rows for row in expected)
    assert "Total params: 12,417,098" in out


def test_summary_with_a_dataset_uses_its_channels_classes_and_size(cli):
    out = cli(
        "summary", "model=lenet5", "dataset=fake", "dataset.size=40", "dataset.num_classes=7"
    ).stdout
    # 3-channel fake images, 7 classes: 62,006 - 3 * (84 + 1) (three fewer outputs)
    assert out.startswith("lenet5: 61,751 parameters, 7 classes, input 3x32x32 (dataset fake)")
    assert "Total params: 61,751" in out and ("Linear-12", "[-1, 7]", "595") in layer_rows(out)
    proc = cli("summary", "model=alexnet_original", "dataset=fake", "dataset.size=40", check=False)
    assert proc.returncode == 1 and "it expects 3x227x227" in proc.stderr
    assert proc.stderr.count("error:") == 1 and "Traceback" not in proc.stderr


# ---- local pretrained weights ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tv_files(tmp_path_factory):
    """torchvision state_dicts (random init, nothing downloaded) under torchvision's names."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(1)
    files = {
        "alexnet": folder / "alexnet-owt-7be5be79.pth",
        "resnet18": folder / "resnet18-f37072fd.pth",
    }
    for name, path in files.items():
        torch.save(getattr(tvm, name)(weights=None).state_dict(), path)
    return files


def test_torchvision_alexnet_file_loads_exactly(tv_files, caplog):
    file_state = torch.load(tv_files["alexnet"], weights_only=True)
    model = create_model("alexnet")
    with caplog.at_level(logging.INFO, logger="cnnbench"):
        apply_weights(model, model_cfg("alexnet", str(tv_files["alexnet"])))
    assert all(torch.equal(v, file_state[k]) for k, v in model.state_dict().items())
    assert "loaded weights for alexnet" in caplog.text and "replaced" not in caplog.text


def test_other_classes_replace_the_head_and_freeze_trains_only_it(tv_files, caplog):
    file_state = torch.load(tv_files["alexnet"], weights_only=True)
    model = create_model("alexnet", 10)
    with caplog.at_level(logging.INFO, logger="cnnbench"):
        apply_weights(model, model_cfg("alexnet", str(tv_files["alexnet"]), freeze=True))
    assert "replaced the classifier head classifier.6 (1000 -> 10 classes" in caplog.text
    assert "training only classifier.6, 40,970 of 57,044,810 parameters" in caplog.text
    state = model.state_dict()
    assert state["classifier.6.weight"].shape == (10, 4096)
    assert all(torch.equal(state[k], v) for k, v in file_state.items() if "classifier.6" not in k)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["classifier.6.weight", "classifier.6.bias"]
    opt = build_optimizer(OmegaConf.structured(SGDConfig(lr=0.1)), model.parameters())
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == 40_970


def test_freeze_keeps_batchnorm_statistics_of_the_file(tv_files):
    file_state = torch.load(tv_files["resnet18"], weights_only=True)
    model = create_model("resnet18", 4)
    apply_weights(model, model_cfg("resnet18", str(tv_files["resnet18"]), freeze=True))
    model.train()
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    assert torch.equal(model.bn1.running_mean, file_state["bn1.running_mean"])
    assert model.conv1.weight.grad is None and model.fc.weight.grad is not None


def test_cnnbench_checkpoints_and_wrapped_or_old_state_dicts_load(tmp_path, tv_files):
    file_state = torch.load(tv_files["resnet18"], weights_only=True)
    variants = {
        "best.pt": {"model": file_state, "model_name": "resnet18", "epoch": 3},
        "ddp.pt": {f"module.{k}": v for k, v in file_state.items()},
        # Files saved before PyTorch 0.4.1 (torchvision's older .pth) have no BN counters.
        "old.pt": {k: v for k, v in file_state.items() if not k.endswith("num_batches_tracked")},
    }
    for file, obj in variants.items():
        # Old torchvision files also use torch.save's legacy (pre-1.6, non-zip) format.
        torch.save(obj, tmp_path / file, _use_new_zipfile_serialization=file != "old.pt")
        model = create_model("resnet18")
        apply_weights(model, model_cfg("resnet18", str(tmp_path / file)))
        assert torch.equal(model.layer4[1].conv2.weight, file_state["layer4.1.conv2.weight"]), file


def test_missing_file_says_where_to_put_what(tmp_path):
    path = tmp_path / "nope" / "alexnet.pth"
    with pytest.raises(CnnbenchError) as err:
        apply_weights(meta_model("alexnet"), model_cfg("alexnet", str(path)))
    msg = str(err.value)
    assert msg.startswith(f"model.weights file not found: {path}. cnnbench never downloads")
    assert "torchvision's ImageNet file alexnet-owt-7be5be79.pth" in msg
    assert "~/.cache/torch/hub/checkpoints/" in msg
    with pytest.raises(CnnbenchError, match="'lenet5' has no published pretrained weights"):
        apply_weights(meta_model("lenet5"), model_cfg("lenet5", str(path)))


def test_mismatched_file_is_one_error_and_loads_nothing(tv_files, tmp_path):
    model = create_model("alexnet")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CnnbenchError) as err:
        apply_weights(model, model_cfg("alexnet", str(tv_files["resnet18"])))
    msg = str(err.value)
    assert f"{tv_files['resnet18']} for model 'alexnet' does not fit: 16 key(s) missing" in msg
    assert "Nothing was loaded; expected weights: for 'alexnet' that is torchvision's" in msg
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

    torch.save({"epoch": 3, "note": "no tensors"}, tmp_path / "junk.pt")
    with pytest.raises(CnnbenchError, match="junk.pt holds no state_dict"):
        apply_weights(model, model_cfg("alexnet", str(tmp_path / "junk.pt")))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_vgg_files_fit_only_their_own_shape():
    with torch.device("meta"):
        vgg_state = tvm.vgg11(weights=None).state_dict()
        head_only = create_model("vgg11", 10)
        other_channels = create_model("vgg11", 1000, 1)
    assert load_state(head_only, vgg_state, what="vgg11") == (
        "classifier.6 (1000 -> 10 classes, freshly initialized)"
    )
    with pytest.raises(CnnbenchError, match=r"1 shape mismatch\(es\): features.0.weight "):
        load_state(other_channels, vgg_state, what="vgg11")
    with pytest.raises(
        CnnbenchError, match=r"18 key\(s\) missing from the file: features.2.weight"
    ):
        load_state(meta_model("vgg13"), vgg_state, what="vgg11 into vgg13")


def test_train_fine_tunes_only_the_head_from_a_torchvision_file(cli, tmp_path, tv_files):
    proc = cli(
        "train",
        "model=resnet18",
        f"model.weights={tv_files['resnet18']}",
        "model.freeze_features=true",
        *FAKE,
        "hydra.run.dir=run",
    )
    assert "replaced the classifier head fc (1000 -> 10 classes" in proc.stdout
    assert "training only fc, 5,130 of 11,181,642 parameters" in proc.stdout
    assert "Trainable params: 5,130" in proc.stdout
    file_state = torch.load(tv_files["resnet18"], weights_only=True)
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["model"]
    frozen = [k for k in file_state if not k.startswith("fc.")]
    assert all(torch.equal(best[k], file_state[k]) for k in frozen if "num_batches" not in k)
    assert best["fc.weight"].shape == (10, 512)


def test_lenet5_pool_before_relu_equals_relu_before_pool():
    """LeNet-5 pools before its ReLUs (cheaper); outputs and gradients match the textbook order."""
    torch.manual_seed(0)
    model = create_model("lenet5", 10, 3)
    f = model.features
    textbook = torch.nn.Sequential(
        f[0], torch.nn.ReLU(), f[1], f[3], torch.nn.ReLU(), f[4], model.classifier
    )
    x = torch.randn(8, 3, 32, 32)
    ours = model(x)
    ours.square().sum().backward()
    ours_grad = f[0].weight.grad.clone()
    f[0].weight.grad = None
    theirs = textbook(x)
    theirs.square().sum().backward()
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert torch.allclose(ours_grad, f[0].weight.grad, atol=1e-5)
    assert [type(m).__name__ for m in f] == [
        "Conv2d", "MaxPool2d", "ReLU", "Conv2d", "MaxPool2d", "ReLU"
    ]  # fmt: skip
