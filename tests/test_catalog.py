"""Every torchvision classifier by name: the catalog, one model per family, timm, native sizes.

Building every torchvision model is slow (vit_h_14 has 632M parameters): the catalog is
checked against torchvision's metadata (no model built), parameters are counted on the meta
device for one model per family, and one step is trained for that model at a small size.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torchvision.models as tvm
from conftest import REPO
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from cnnbench.config import ModelConfig, compose_checked
from cnnbench.engine import TrainStep
from cnnbench.errors import CnnbenchError
from cnnbench.models import apply_weights, count_params, create_model, registered_models
from cnnbench.models.catalog import ENTRIES, TORCHVISION, find_entry, zoo_entries
from cnnbench.models.torchvision_zoo import EXTRA_ARGS, first_conv, regnet_widths_on_cpu
from cnnbench.models.weights import classifier_head

TV_ENTRIES = [e for e in ENTRIES if e.module == TORCHVISION]

# One model per torchvision family (the smallest), its head and its first convolution.
FAMILY = {
    "convnext": ("convnext_tiny", "classifier.2", "features.0.0"),
    "densenet": ("densenet121", "classifier", "features.conv0"),
    "efficientnet": ("efficientnet_b0", "classifier.1", "features.0.0"),
    "googlenet": ("googlenet", "fc", "conv1.conv"),
    "inception": ("inception_v3", "fc", "Conv2d_1a_3x3.conv"),
    "maxvit": ("maxvit_t", "classifier.5", "stem.0.0"),
    "mnasnet": ("mnasnet0_5", "classifier.1", "layers.0"),
    "mobilenetv2": ("mobilenet_v2", "classifier.1", "features.0.0"),
    "mobilenetv3": ("mobilenet_v3_small", "classifier.3", "features.0.0"),
    "regnet": ("regnet_x_400mf", "fc", "stem.0"),
    "resnet": ("resnet50", "fc", "conv1"),
    "shufflenetv2": ("shufflenet_v2_x0_5", "fc", "conv1.0"),
    "squeezenet": ("squeezenet1_1", "classifier.1", "features.0"),
    "swin_transformer": ("swin_t", "head", "features.0.0"),
    "vision_transformer": ("vit_b_32", "heads.head", "conv_proj"),
}
REPRESENTATIVES = [names[0] for names in FAMILY.values()]


@pytest.fixture
def one_thread():
    """One CPU thread for in-process steps: the test process has no OMP_WAIT_POLICY=PASSIVE
    (the CLI sets it), and busy-waiting threads on a shared machine are 10-100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def meta_build(name: str, *args: int) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, *args)


# ---- the catalog: every torchvision classifier, facts from torchvision itself ----------------


def test_catalog_is_the_zoo_plus_every_torchvision_classifier():
    """Fails when torchvision (or the zoo) changes: run `python scripts/model_catalog.py`."""
    zoo = [info.name for info in registered_models()]
    assert [e.name for e in zoo_entries()] == zoo
    listed = tvm.list_models(module=tvm)
    assert [e.name for e in TV_ENTRIES] == [n for n in listed if n not in zoo]
    assert {"alexnet", "resnet18", "vgg16"} <= set(listed) & set(zoo)  # the zoo's are kept
    assert {e.family for e in TV_ENTRIES} == set(FAMILY)


def test_catalog_rows_match_torchvision_metadata():
    """Native size = the crop size of the recorded weights entry (no download: metadata)."""
    for e in TV_ENTRIES:
        weights = tvm.get_model_weights(e.name)[e.weights]
        side = weights.transforms.keywords["crop_size"]
        assert e.input_size == (3, side, side) and e.num_classes == 1000, e.name
        assert e.min_size == weights.meta["min_size"][0], e.name
        assert e.family == tvm.get_model_builder(e.name).__module__.rsplit(".", 1)[-1]
    assert find_entry("vit_h_14").input_size == (3, 224, 224)  # its 518 DEFAULT is not ours
    assert find_entry("inception_v3").input_size == (3, 299, 299)
    assert find_entry("efficientnet_b7").input_size == (3, 600, 600)
    for e in zoo_entries():
        info = registered_models()[[i.name for i in registered_models()].index(e.name)]
        assert (e.input_size, e.num_classes, e.source) == (
            info.input_size,
            info.num_classes,
            info.source,
        )


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_params_and_state_dict_are_torchvision_s(name):
    ours = meta_build(name)
    with torch.device("meta"), regnet_widths_on_cpu():
        theirs = tvm.get_model(name, weights=None, **EXTRA_ARGS.get(name, {}))
    assert count_params(ours) == count_params(theirs) == find_entry(name).params
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()
    }


@pytest.mark.parametrize("family", list(FAMILY))
def test_one_model_per_family_trains_a_step_at_a_small_size(family, one_thread):
    """1-channel images, 3 classes: the stem and the head follow; logits, a finite loss,
    and the head `classifier_head` finds is the layer that outputs them."""
    name, head_name, conv_name = FAMILY[family]
    side = max(32, find_entry(name).min_size)  # ViT/Swin/MaxViT: 224, Inception: 75
    torch.manual_seed(0)
    model = create_model(name, 3, 1)
    assert first_conv(model)[0] == conv_name and first_conv(model)[1].in_channels == 1
    head = classifier_head(model)
    assert head[0] == head_name
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    step = TrainStep(opt, nn.CrossEntropyLoss())
    before = head[1].weight.detach().clone()
    logits, loss = step(model.train(), torch.randn(2, 1, side, side), torch.tensor([0, 2]))
    assert logits.shape == (2, 3) and torch.isfinite(loss)
    assert not torch.equal(before, head[1].weight)  # the step updated the head


def test_wrong_size_names_the_native_size():
    from cnnbench.models import check_input_size

    model = create_model("vit_b_32", 4)
    with pytest.raises(CnnbenchError) as err:
        check_input_size("vit_b_32", model, (3, 64, 64), torch.device("cpu"))
    assert str(err.value).startswith(
        "model 'vit_b_32' cannot take 3x64x64 images: it expects 3x224x224"
    )
    assert "transforms.resize=224" in str(err.value)


# ---- weights: heads of other shapes, auxiliary classifiers ----------------------------------


def model_cfg(name: str, weights: str, freeze: bool = False):
    return OmegaConf.structured(ModelConfig(name=name, weights=weights, freeze_features=freeze))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_googlenet_file_with_aux_heads_loads_into_the_aux_free_model(tmp_path, caplog):
    torch.manual_seed(1)
    state = tvm.googlenet(weights=None, aux_logits=True, init_weights=True).state_dict()
    torch.save(state, tmp_path / "googlenet.pth")
    model = create_model("googlenet", 5)
    with caplog.at_level(logging.INFO, logger="cnnbench"):
        apply_weights(model, model_cfg("googlenet", str(tmp_path / "googlenet.pth")))
    assert "left out the file's 20 auxiliary-classifier tensors (aux1." in caplog.text
    assert "replaced the classifier head fc (1000 -> 5 classes" in caplog.text
    assert torch.equal(model.conv1.conv.weight, state["conv1.conv.weight"])


def test_squeezenet_conv_head_is_replaced_and_trained_alone(tmp_path, caplog):
    torch.manual_seed(1)
    state = OrderedDict(tvm.squeezenet1_1(weights=None).state_dict())
    torch.save(state, tmp_path / "sq.pth")
    model = create_model("squeezenet1_1", 4)
    with caplog.at_level(logging.INFO, logger="cnnbench"):
        apply_weights(model, model_cfg("squeezenet1_1", str(tmp_path / "sq.pth"), freeze=True))
    assert "replaced the classifier head classifier.1 (1000 -> 4 classes" in caplog.text
    assert "training only classifier.1, 2,052 of 724,548 parameters" in caplog.text
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["classifier.1.weight", "classifier.1.bias"]


def test_missing_vit_h_file_names_the_224_weights():
    with pytest.raises(CnnbenchError) as err:
        apply_weights(meta_build("vit_h_14"), model_cfg("vit_h_14", "/nowhere/vit.pth"))
    assert "torchvision's ImageNet file vit_h_14_lc_swag-c1eb923e.pth" in str(err.value)
    assert "vit_h_14(weights='IMAGENET1K_SWAG_LINEAR_V1')" in str(err.value)  # its 224x224 one


# ---- timm (optional extra) -------------------------------------------------------------------


def test_timm_model_builds_and_trains_a_step(one_thread):
    pytest.importorskip("timm", reason="pip install 'cnnbench[timm]'")
    cfg = compose_checked(["model=timm", "model.arch=resnet10t"])
    assert cfg.model.name == "timm/resnet10t"
    model = create_model(cfg.model.name, 3, 1)
    assert classifier_head(model)[0] == "fc"
    step = TrainStep(torch.optim.SGD(model.parameters(), lr=0.01), nn.CrossEntropyLoss())
    logits, loss = step(model.train(), torch.randn(2, 1, 32, 32), torch.tensor([0, 1]))
    assert logits.shape == (2, 3) and torch.isfinite(loss)
    from cnnbench.models import native_input_size

    assert native_input_size("timm/vit_tiny_patch16_224") == (3, 224, 224)


def test_timm_missing_is_one_error_naming_the_extra(monkeypatch):
    from cnnbench.config import check_values

    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(CnnbenchError, match=r"pip install 'cnnbench\[timm\]'"):
        create_model("timm/resnet18")
    cfg = compose_checked(["model=timm", "model.arch=resnet18"])
    with pytest.raises(CnnbenchError, match=r"model=timm needs timm.*cnnbench\[timm\]"):
        check_values(cfg)
    with pytest.raises(CnnbenchError, match="model=timm needs model.arch=NAME"):
        check_values(compose_checked(["model=timm"]))


# ---- commands: models --all, no torch to compose ---------------------------------------------


def test_models_all_lists_every_catalog_model(cli):
    out = cli("models", "--all").stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line.strip()}
    assert [n for n in rows if n != "model=timm"] == [e.name for e in ENTRIES]
    assert rows["resnet50"][1:4] == ["25,557,032", "3x224x224", "1000"]
    assert rows["efficientnet_b0"][1:3] == ["5,288,548", "3x224x224"]
    assert "torchvision (IMAGENET1K_V2, ImageNet top-1 80.9%)" in out  # resnet50's weights
    assert "model=timm model.arch=NAME" in out
    assert len(cli("models").stdout.splitlines()) == 1 + len(zoo_entries())
    help_text = cli("train", "--help").stdout
    assert "model=timm model.arch=NAME" in help_text and "cnnbench plan" in help_text
    assert "resnet50, resnet101" not in help_text and "resnet18, resnet34, resnet50" in help_text


def test_composing_a_config_and_listing_models_import_no_torch():
    code = (
        "import sys; from cnnbench.config import compose_checked; "
        "compose_checked(['model=resnet50', 'model.in_channels=1']); "
        "from cnnbench.commands.models import zoo_rows; zoo_rows(True); "
        "print('torch' in sys.modules)"
    )
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "False", out.stderr[-2000:]


# ---- native input size by default -----------------------------------------------------------


@pytest.fixture
def pets(tmp_path):
    root = tmp_path / "pets"
    rng = np.random.default_rng(0)
    for cls, color in (("cat", (200, 60, 60)), ("dog", (60, 60, 200))):
        (root / cls).mkdir(parents=True)
        for i in range(12):
            shape = (30 + i, 40 + 3 * i, 3)  # photos come in their own sizes
            arr = np.clip(rng.normal(color, 25, shape), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / cls / f"{i}.jpg")
    return root


def folder_data(pets, tmp_path, *extra: str):
    from cnnbench.train import build_data

    cfg = compose_checked(
        ["dataset=folder", f"dataset.root={pets}", f"dataset.cache_dir={tmp_path / 'c'}", *extra]
    )
    cfg.progress = False
    return build_data(cfg, progress=False)


def test_folder_images_are_stored_at_the_model_s_native_size(pets, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="cnnbench"):
        assert folder_data(pets, tmp_path, "model=alexnet").input_size == (3, 224, 224)
    assert "storing the images at alexnet's native size, 224x224" in caplog.text
    assert folder_data(pets, tmp_path, "model=lenet5").input_size == (3, 32, 32)
    assert folder_data(pets, tmp_path, "model=inception_v3").input_size == (3, 299, 299)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cnnbench"):  # given sizes win
        data = folder_data(pets, tmp_path, "model=alexnet", "transforms.resize=64")
        assert data.input_size == (3, 64, 64)
        assert folder_data(pets, tmp_path, "dataset.image_size=40").input_size == (3, 40, 40)
    assert "native size" not in caplog.text


def test_train_and_summary_on_a_folder_need_no_size(cli, pets, tmp_path, one_thread):
    from cnnbench.commands.summary import summarize

    folder = ["dataset=folder", f"dataset.root={pets}", f"dataset.cache_dir={tmp_path / 'c'}"]
    cfg = compose_checked(["model=alexnet", "device=cpu", *folder])
    out = summarize(cfg, use_dataset=True, use_transforms=False)  # built and checked at 224
    assert out.startswith("alexnet: 57,012,034 parameters, 2 classes, input 3x224x224 (dataset")
    run = ["epochs=1", "batch_size=8", "device=cpu", "progress=false", "hydra.run.dir=run"]
    proc = cli("train", "model=lenet5", *folder, *run)
    assert "storing the images at lenet5's native size, 32x32" in proc.stdout + proc.stderr
    assert "model input 3x32x32" in proc.stdout + proc.stderr
    assert (tmp_path / "run" / "best.pt").is_file()
