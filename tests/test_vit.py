"""ViT backbones from local Hugging Face folders (``hf:PATH``), tested with tiny randomly
initialised models built here (no download): DINO (ViT), DINOv2 with and without registers,
DINOv3 and a CLIP image tower. Maps of the right grid, block fusion, every method end to end
(fit → save → load → predict → export), the CLI, and the one-line refusals: pickled or
mismatched weights, a wrong size or block, and a folder changed after the fit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from conftest import make_mvtec, small_config

from costfilter.api import Detector
from costfilter.backbones import build_backbone
from costfilter.data import load_dataset, split_of
from costfilter.errors import CheckpointError, CostfilterError
from costfilter.methods import REGISTRY, get_method

COMMON = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, patch_size=8,
              image_size=64)


def _models():
    t = transformers
    return {
        "vit": (t.ViTConfig(**COMMON), t.ViTModel, 1),  # DINO (v1) checkpoints are ViTModels
        "dinov2": (t.Dinov2Config(**COMMON), t.Dinov2Model, 1),
        "dinov2_reg": (t.Dinov2WithRegistersConfig(num_register_tokens=4, **COMMON), t.Dinov2WithRegistersModel, 5),
        "dinov3": (t.DINOv3ViTConfig(num_register_tokens=4, **COMMON), t.DINOv3ViTModel, 5),
        "clip": (t.CLIPVisionConfig(**COMMON), t.CLIPVisionModel, 1),
    }


@pytest.fixture(scope="module")
def vits(tmp_path_factory):
    """name → (folder, tokens before the patches)."""
    root = tmp_path_factory.mktemp("vits")
    out = {}
    for name, (config, cls, prefix) in _models().items():
        torch.manual_seed(0)
        cls(config).save_pretrained(root / name, safe_serialization=True)
        out[name] = (root / name, prefix)
    return out


@pytest.mark.parametrize("name", list(_models()))
def test_patch_tokens_become_maps_on_the_patch_grid(vits, name):
    folder, prefix = vits[name]
    bb = build_backbone(f"hf:{folder}", [2, 4], 64)
    assert bb.prefix == prefix and bb.channels == (32, 32) and bb.strides == (8, 8)
    x = torch.randn(2, 3, 96, 96)  # any multiple of the patch size, not only the trained 64
    maps = bb(x)
    assert [tuple(m.shape) for m in maps] == [(2, 32, 12, 12)] * 2
    # the map is the block's patch tokens, in raster order, with CLS and registers dropped
    hidden = bb.net(pixel_values=x * bb.scale + bb.shift, output_hidden_states=True, **bb.extra).hidden_states[4]
    assert torch.equal(maps[1][1, :, 2, 5], hidden[1, prefix + 2 * 12 + 5])
    fused = build_backbone(f"hf:{folder}", [1, 2, 3, 4], 64, groups=2)(x)
    each = bb.net(pixel_values=x * bb.scale + bb.shift, output_hidden_states=True, **bb.extra).hidden_states
    first = torch.stack([h[:, prefix:].transpose(1, 2).reshape(2, 32, 12, 12) for h in each[1:3]]).mean(0)
    assert len(fused) == 2 and torch.allclose(fused[0], first, atol=1e-6)


def test_clip_and_dino_are_fed_their_own_normalisation(vits):
    clip = build_backbone(f"hf:{vits['clip'][0]}", [1], 64)
    dino = build_backbone(f"hf:{vits['dinov2'][0]}", [1], 64)
    imagenet = (torch.rand(1, 3, 8, 8) - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / \
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    raw = imagenet * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) + torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    want_clip = (raw - torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)) / \
        torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    assert torch.allclose(imagenet * clip.scale + clip.shift, want_clip, atol=1e-5)
    assert torch.allclose(imagenet * dino.scale + dino.shift, imagenet, atol=1e-6)


def _vit_config(folder, method: str = "memory"):
    cfg = small_config()
    cfg.method = method
    cfg.features.backbone, cfg.features.layers = f"hf:{folder}", (2, 3)
    cf = cfg.costfilter
    cf.widths, cf.top_k, cf.max_templates, cf.recon_steps = (4, 8), 4, 6, 4
    for tr in (cf.training, cfg.dfm.training):
        tr.steps, tr.val_every, tr.n_val = 3, 3, 4
    return cfg


@pytest.mark.parametrize("name", list(_models()))
def test_memory_bank_on_every_vit_fit_save_load_predict(vits, name, tmp_path):
    root = make_mvtec(tmp_path / "m", n_train=5)
    paths = [s.path for s in split_of(load_dataset(root), "test")]
    det = Detector(_vit_config(vits[name][0]), progress=False).fit(root)
    first = det.predict(paths)
    assert all(np.isfinite(p.score) and p.anomaly_map.shape == (64, 64) for p in first)
    det.save(tmp_path / "m.ckpt")
    again = Detector.load(tmp_path / "m.ckpt", progress=False).predict(paths)
    assert [p.score for p in again] == [p.score for p in first]


@pytest.mark.parametrize("method", list(REGISTRY))
def test_every_method_runs_on_a_vit_and_exports(vits, method, tmp_path):
    pytest.importorskip("onnxruntime")
    from costfilter.export import OnnxDetector, compare_predictions, export_onnx

    root = make_mvtec(tmp_path / "m", n_train=6)
    paths = [s.path for s in split_of(load_dataset(root), "test")]
    det = Detector(_vit_config(vits["dinov2_reg"][0], method), progress=False)
    if get_method(method).needs_fit:
        det.fit(root)
        det.save(tmp_path / "m.ckpt")
        det = Detector.load(tmp_path / "m.ckpt", progress=False)
    first = det.predict(paths)
    assert all(np.isfinite(p.score) for p in first)
    if get_method(method).exportable:
        export_onnx(det, tmp_path / "m.onnx")
        diff = compare_predictions(first, OnnxDetector(tmp_path / "m.onnx").predict(paths))
        assert diff["max_score_rel_diff"] < 1e-3 and diff["max_map_rel_diff"] < 1e-2, diff
        assert diff["decision_agreement"] == 1.0


def test_fit_cli_takes_an_hf_folder_with_layers_and_groups(vits, tmp_path):
    from click.testing import CliRunner

    from costfilter.cli import main

    root = make_mvtec(tmp_path / "m", n_train=5)
    out = tmp_path / "v.ckpt"
    r = CliRunner().invoke(main, ["fit", str(root), "--out", str(out), "--backbone", f"hf:{vits['dinov3'][0]}",
                                  "--layers", "1,2,3,4", "--layer-groups", "2", "--image-size", "64", "-q"])
    assert r.exit_code == 0, r.output
    det = Detector.load(out, progress=False)
    assert det.config.features.layers == (1, 2, 3, 4) and det.config.features.layer_groups == 2
    assert det.model.features.channels == 64  # two fused groups of 32
    r = CliRunner().invoke(main, ["info", str(out)])
    assert r.exit_code == 0 and "hf:" in r.output


def test_changing_the_folder_after_the_fit_is_refused(vits, tmp_path):
    import shutil

    folder = tmp_path / "dino"
    shutil.copytree(vits["dinov2"][0], folder)
    root = make_mvtec(tmp_path / "m", n_train=5)
    cfg = _vit_config(folder)
    Detector(cfg, progress=False).fit(root).save(tmp_path / "m.ckpt")
    config = json.loads((folder / "config.json").read_text())
    config["layer_norm_eps"] = 1e-3  # one value that changes every answer
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="backbone weights .* have changed since the fit"):
        Detector.load(tmp_path / "m.ckpt", progress=False)


def test_bad_folders_sizes_and_blocks_are_one_line_errors(vits, tmp_path):
    t = transformers
    wrong = tmp_path / "wrong"
    torch.manual_seed(0)
    t.Dinov2Model(t.Dinov2Config(**COMMON)).save_pretrained(wrong, safe_serialization=True)
    bigger = dict(COMMON, hidden_size=48)
    (wrong / "config.json").write_text(json.dumps(dict(json.loads((wrong / "config.json").read_text()), **bigger)))
    with pytest.raises(CostfilterError, match="do not fit its config.json|cannot load the model"):
        build_backbone(f"hf:{wrong}", [1], 64)
    pickled = tmp_path / "pickled"
    t.Dinov2Model(t.Dinov2Config(**COMMON)).save_pretrained(pickled, safe_serialization=False)
    for f in pickled.glob("*.safetensors"):
        f.unlink()
    if not any(pickled.glob("*.bin")):
        torch.save({}, pickled / "pytorch_model.bin")
    with pytest.raises(CostfilterError, match="no .safetensors weights"):
        build_backbone(f"hf:{pickled}", [1], 64)
    with pytest.raises(CostfilterError, match="multiple of .* patch size 8"):
        build_backbone(f"hf:{vits['dinov2'][0]}", [1], 60)
    with pytest.raises(CostfilterError, match=r"block numbers 1–4"):
        build_backbone(f"hf:{vits['dinov2'][0]}", [5], 64)
    with pytest.raises(CostfilterError, match="not a Hugging Face model folder"):
        build_backbone(f"hf:{tmp_path / 'nothing'}", [1], 64)
    cfg = small_config()
    cfg.features.layer_groups = 2
    with pytest.raises(CostfilterError, match="needs an hf: backbone"):
        cfg.validate()


def test_a_folder_missing_weights_is_refused_unless_partial_weights_are_allowed(vits, tmp_path):
    import warnings

    from safetensors.torch import load_file, save_file

    t = transformers
    folder = tmp_path / "cut"
    torch.manual_seed(0)
    t.Dinov2Model(t.Dinov2Config(**COMMON)).save_pretrained(folder, safe_serialization=True)
    (weights,) = folder.glob("*.safetensors")
    state = load_file(weights)
    gone = sorted(k for k in state if "layer.1." in k)
    save_file({k: v for k, v in state.items() if k not in gone}, weights, metadata={"format": "pt"})
    with pytest.raises(CostfilterError, match=f"{len(gone)} missing.*first:"):
        build_backbone(f"hf:{folder}", [1, 2], 56)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        net = build_backbone(f"hf:{folder}", [1, 2], 56, allow_partial=True)
    assert any("randomly initialised" in str(w.message) for w in seen) and len(net(torch.zeros(1, 3, 56, 56))) == 2


def test_reference_preset_sets_the_papers_values_and_needs_its_backbone(vits, tmp_path):
    from click.testing import CliRunner

    from costfilter.cli import main
    from costfilter.config import DetectorConfig
    from costfilter.presets import apply_preset

    cfg = DetectorConfig(method="costfilter")
    apply_preset(cfg, "reference")
    assert (cfg.preset, cfg.features.image_size, cfg.features.layers, cfg.features.layer_groups) == \
        ("reference", 392, (3, 4, 5, 6, 7, 8, 9, 10), 2)
    assert (cfg.costfilter.top_k, cfg.costfilter.widths, cfg.costfilter.training.batch_size) == (768, (48, 96, 96, 192), 12)
    with pytest.raises(CostfilterError, match="no preset 'paper' for method 'costfilter' \\(presets: reference\\)"):
        apply_preset(DetectorConfig(method="costfilter"), "paper")
    with pytest.raises(CostfilterError, match="method 'dfm' \\(it has none\\)"):
        apply_preset(DetectorConfig(method="dfm"), "reference")
    root = make_mvtec(tmp_path / "m", n_train=6)
    r = CliRunner().invoke(main, ["fit", str(root), "--method", "costfilter", "--preset", "reference",
                                  "--out", str(tmp_path / "x.ckpt"), "-q"])
    assert r.exit_code == 2 and "give it with --backbone hf:FOLDER (got efficientnet_lite0)" in r.output
    # the preset on a tiny random DINOv2, with options that win over it (fewer blocks, a small input)
    folder = vits["dinov2"][0]
    out = tmp_path / "ref.ckpt"
    small = tmp_path / "small.yaml"  # what the preset leaves alone: a small validation set and pool
    small.write_text("method: costfilter\ncostfilter: {pool_size: 16, max_templates: 6, training: {n_val: 8}}\n")
    r = CliRunner().invoke(main, ["fit", str(root), "--config", str(small), "--preset", "reference",
                                  "--backbone", f"hf:{folder}", "--layers", "1,2,3,4", "--image-size", "64",
                                  "--steps", "2", "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    info = CliRunner().invoke(main, ["info", str(out)])
    assert "costfilter (preset reference)" in info.output and "layers [1, 2, 3, 4] in 2 groups; input 64 px" in info.output


def test_zeroshot_reference_preset_from_the_command_line(vits, tmp_path):
    from click.testing import CliRunner

    from costfilter.cli import main

    root = make_mvtec(tmp_path / "m", n_train=4)
    r = CliRunner().invoke(main, ["test", "--method", "zeroshot", "--preset", "reference", str(root)])
    assert r.exit_code == 2 and "give it with --backbone hf:FOLDER" in r.output
    model = tmp_path / "model.ckpt"
    r = CliRunner().invoke(main, ["test", str(model), str(root), "--preset", "reference"])
    assert r.exit_code == 2 and "--preset applies to --method zeroshot only" in r.output
    # the preset's 518 px and blocks 6–24 do not fit a 4-block toy: its checks name the block range
    folder = vits["clip"][0]
    r = CliRunner().invoke(main, ["test", "--method", "zeroshot", "--preset", "reference", "--backbone",
                                  f"hf:{folder}", str(root)])
    assert r.exit_code == 2 and "must be block numbers 1–4" in r.output
