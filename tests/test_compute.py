"""Devices and precisions (issue 28): every stage names the device of what it makes, a device the
machine lacks is a one-line error, bf16 runs the smoke path, and fp32 CPU results are unchanged.

No GPU here, so the device check is indirect: with torch's *default* device set to ``meta``,
a tensor or module made without naming its device lands on ``meta`` and the run fails; a run
that passes has placed everything it made on the detector's device, as a CUDA run needs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_mvtec, small_config
from test_costfilter import cf_config

from costfilter import Detector
from costfilter.compute import resolve
from costfilter.config import DetectorConfig
from costfilter.data import load_dataset, split_of
from costfilter.errors import CostfilterError


def _config(method: str) -> DetectorConfig:
    if method == "costfilter":
        return cf_config("memory")
    cfg = small_config(coreset_ratio=0.5)
    cfg.method = method
    if method == "dfm":
        tr = cfg.dfm.training
        tr.steps, tr.val_every, tr.batch_size, tr.n_val = 4, 2, 4, 8
    return cfg


@pytest.mark.parametrize("method", ["memory", "dfm", "costfilter", "zeroshot"])
def test_every_stage_names_its_device(tmp_path, method):
    root = make_mvtec(tmp_path / "m", n_train=6)
    paths = [s.path for s in split_of(load_dataset(root), "test")]
    det = Detector(_config(method), progress=False, device="cpu")
    with torch.device("meta"):
        if method != "zeroshot":
            det.fit(root)
        preds = det.predict(paths)
        if method != "zeroshot":
            det.save(tmp_path / "m.ckpt")
            again = Detector.load(tmp_path / "m.ckpt", progress=False, device="cpu").predict(paths)
            assert [p.score for p in again] == [p.score for p in preds]
    assert all(np.isfinite(p.score) for p in preds)


def test_bf16_runs_the_smoke_path_and_fp32_is_unchanged(tmp_path):
    root = make_mvtec(tmp_path / "m", n_train=6)
    paths = [s.path for s in split_of(load_dataset(root), "test")]
    plain = Detector(small_config(), progress=False).fit(root)
    named = Detector(small_config(), progress=False, device="cpu", precision="fp32").fit(root)
    assert [p.score for p in named.predict(paths)] == [p.score for p in plain.predict(paths)]
    half = Detector(small_config(), progress=False, device="cpu", precision="bf16").fit(root)
    a, b = np.array([p.score for p in plain.predict(paths)]), np.array([p.score for p in half.predict(paths)])
    assert np.isfinite(b).all() and not np.array_equal(a, b)  # the backbone really ran in bfloat16
    assert np.corrcoef(a, b)[0, 1] > 0.9
    # A model fitted at one precision opens at another: checkpoints hold no device or precision.
    half.save(tmp_path / "h.ckpt")
    opened = Detector.load(tmp_path / "h.ckpt", progress=False)
    assert opened.compute.precision == "fp32" and str(opened.compute.device) == "cpu"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("method", ["memory", "dfm", "costfilter", "zeroshot"])
def test_every_method_trains_and_scores_at_half_precision(tmp_path, method, precision):
    """Autocast reaches the training too; the losses stay float32, so nothing turns NaN (CostFilter-
    AD's SSIM term did in bfloat16 before its loss was taken out of autocast)."""
    root = make_mvtec(tmp_path / "m", n_train=6)
    det = Detector(_config(method), progress=False, device="cpu", precision=precision)
    if method != "zeroshot":
        det.fit(root)
        assert all(torch.isfinite(p).all() for p in det.model.parameters())
        if det.state.training is not None:
            assert np.isfinite(det.state.training.losses).all()
    preds = det.predict([s.path for s in split_of(load_dataset(root), "test")])
    assert np.isfinite([p.score for p in preds]).all()


@pytest.mark.parametrize("device, message", [
    ("cuda", "no CUDA GPU is visible"), ("cuda:3", "no CUDA GPU is visible"), ("mps", "MPS is not available"),
    ("tpu", "--device must be auto, cpu, cuda, cuda:N or mps"), ("gpu0", "--device must be"),
])
def test_a_device_this_machine_lacks_is_one_line(device, message):
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(CostfilterError, match=message) as err:
        resolve(device)
    assert "\n" not in str(err.value)


def test_auto_is_the_cpu_here_and_a_bad_precision_is_refused():
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert str(resolve("auto").device) == "cpu"
    with pytest.raises(CostfilterError, match="--precision must be one of fp32, bf16, fp16"):
        resolve("cpu", "int4")


def test_cli_runs_bf16_on_the_cpu_and_refuses_a_missing_gpu_in_one_line(tmp_path):
    import json

    from click.testing import CliRunner

    from costfilter.cli import main
    from costfilter.compute import CPU, set_default

    root = make_mvtec(tmp_path / "m", n_train=6)
    ckpt = tmp_path / "m.ckpt"
    try:
        r = CliRunner().invoke(main, ["fit", str(root), "--out", str(ckpt), "--image-size", "64", "--device", "cpu",
                                      "--precision", "bf16", "-q"])
        assert r.exit_code == 0, r.output
        r = CliRunner().invoke(main, ["test", str(ckpt), str(root), "--json", str(tmp_path / "t.json"),
                                      "--precision", "bf16", "-q"])
        assert r.exit_code == 0, r.output
        metrics = json.loads((tmp_path / "t.json").read_text())
        assert 0.0 <= metrics["per_category"]["alpha"]["image_auroc"] <= 1.0
        assert metrics["environment"]["compute"] == "cpu, bf16"
        if not torch.cuda.is_available():
            r = CliRunner().invoke(main, ["predict", str(ckpt), str(root / "alpha" / "test"), "--out",
                                          str(tmp_path / "p"), "--device", "cuda", "-q"])
            assert r.exit_code == 2
            assert r.output.strip().splitlines() == [
                f"error: --device cuda: no CUDA GPU is visible to this torch ({torch.__version__}); use --device cpu"]
            assert not (tmp_path / "p").exists()
    finally:
        set_default(CPU)  # the options set the process's default; later tests expect the CPU


def test_gpu_check_script_runs_its_comparison(tmp_path):
    """benchmarks/gpu_check.py with the CPU on both sides: the comparison must run and agree
    exactly, so the script is ready when a GPU is lent."""
    from benchmarks.gpu_check import run

    root = make_mvtec(tmp_path / "m", n_train=6)
    out = run(root / "alpha", "cpu", steps=2, image_size=64, methods=("memory", "dfm", "zeroshot"))
    assert out["ok"], out["methods"]
    for method in ("memory", "dfm", "zeroshot"):
        row = out["methods"][method]
        assert row["same_model"]["max_score_rel_diff"] == 0.0 and row["same_model"]["decision_agreement"] == 1.0
        assert all(d == 0.0 for d in row["metric_diff"].values())
    assert out["methods"]["dfm"]["gpu"]["steps"] == 2
