"""The command line end to end on a tiny tree: fit, test, predict, info; errors are one line."""

from __future__ import annotations

import csv
import json
import os

import pytest
from click.testing import CliRunner
from conftest import make_mvtec, small_config

from costfilter.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    root = make_mvtec(tmp / "data", categories=("alpha",))
    cfg = tmp / "cfg.yaml"
    cfg.write_text(small_config().to_yaml())
    ckpt = tmp / "model.ckpt"
    r = CliRunner().invoke(main, ["fit", str(root), "--out", str(ckpt), "--config", str(cfg), "--quiet"])
    assert r.exit_code == 0, r.output
    assert "fitted memory on 8 normal images" in r.output
    return tmp, root, ckpt


def test_test_prints_table_and_writes_json(trained):
    tmp, root, ckpt = trained
    out = tmp / "metrics.json"
    r = CliRunner().invoke(main, ["test", str(ckpt), str(root), "--json", str(out), "-q"])
    assert r.exit_code == 0, r.output
    assert "| alpha |" in r.output and "I-AUROC" in r.output and "AUPRO@0.3" in r.output
    data = json.loads(out.read_text())
    assert data["per_category"]["alpha"]["image_auroc"] == 1.0
    assert data["environment"]["cpu_count"] == os.cpu_count()
    again = CliRunner().invoke(main, ["test", str(ckpt), str(root), "--json", str(out), "-q"])
    assert again.exit_code == 2 and "already exists" in again.output


def test_predict_writes_overlays_masks_and_tables(trained):
    tmp, root, ckpt = trained
    out = tmp / "pred"
    r = CliRunner().invoke(main, ["predict", str(ckpt), str(root / "alpha" / "test" / "spot"),
                                  str(root / "alpha" / "test" / "good" / "000.png"), "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 4
    jsonl = [json.loads(line) for line in open(out / "results.jsonl")]
    assert [j["image"] for j in jsonl] == [row["image"] for row in rows]
    for row in rows:
        assert row["decision"] in ("pass", "review", "reject")
        assert (out / row["overlay"]).is_file() and (out / row["mask"]).is_file()
    assert sum(row["decision"] == "reject" for row in rows if "/spot/" in row["image"]) == 3
    # Two inputs with the same file name do not overwrite each other's pictures.
    assert len({row["overlay"] for row in rows}) == 4
    refused = CliRunner().invoke(main, ["predict", str(ckpt), str(root / "alpha" / "test" / "good"),
                                        "--out", str(out), "-q"])
    assert refused.exit_code == 2 and "not empty" in refused.output


def test_info_shows_model_card(trained):
    _, _, ckpt = trained
    r = CliRunner().invoke(main, ["info", str(ckpt)])
    assert r.exit_code == 0
    assert "efficientnet_lite0" in r.output and "good images (every fit image, scored without its own bank rows)" in r.output


@pytest.mark.parametrize("args, expected", [
    (["fit", "{tmp}/nowhere", "--out", "{tmp}/m.ckpt"], "dataset folder not found"),
    (["predict", "{tmp}/model.ckpt", "{tmp}/missing.png", "--out", "{tmp}/o"], "missing.png: file not found"),
    (["test", "{tmp}/cfg.yaml", "{tmp}/data"], "not a costfilter checkpoint"),
    (["fit", "{tmp}/data", "--out", "{tmp}/model.ckpt"], "already exists (use --force"),
])
def test_errors_are_one_line_without_traceback(trained, args, expected):
    tmp, _, _ = trained
    r = CliRunner().invoke(main, [a.format(tmp=tmp) for a in args])
    assert r.exit_code == 2
    assert expected in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


def test_fit_shots_is_saved_and_shown(tmp_path):
    root = make_mvtec(tmp_path / "m", n_train=6)
    ckpt = tmp_path / "few.ckpt"
    r = CliRunner().invoke(main, ["fit", str(root), "--out", str(ckpt), "--shots", "3", "--image-size", "64", "-q"])
    assert r.exit_code == 0, r.output
    assert "fitted memory on 3 normal images" in r.output
    info = CliRunner().invoke(main, ["info", str(ckpt)])
    assert "few-shot: 3 per category, seed 0" in info.output


def test_test_reports_each_operating_points_false_rejects_and_recall(trained):
    """AUROC ranks; a line acts on a threshold: `test` says what each saved point rejects of the
    test's good and defective images (counted here by hand from the model's own scores)."""
    from costfilter import Detector

    tmp, root, ckpt = trained
    out = tmp / "points.json"
    r = CliRunner().invoke(main, ["test", str(ckpt), str(root), "--json", str(out), "-q"])
    assert r.exit_code == 0, r.output
    assert "recall on test defects (95 % CI)" in r.output and "| alpha | balanced |" in r.output
    det = Detector.load(ckpt)
    recs = det.evaluate(root).samples
    good = [x.score for x in recs if x.label == 0]
    bad = [x.score for x in recs if x.label == 1]
    got = {p["name"]: p for p in json.loads(out.read_text())["operating_points"]["alpha"]}
    assert set(got) == {p.name for p in det.state.operating_points} >= {"chosen", "strict", "balanced", "lenient"}
    for point in det.state.operating_points:
        g = got[point.name]
        rejected_good = sum(s > point.threshold for s in good)
        caught = sum(s > point.threshold for s in bad)
        assert g["threshold"] == point.threshold and (g["n_good"], g["n_defective"]) == (len(good), len(bad))
        assert g["false_reject"] == rejected_good / len(good) and g["recall"] == caught / len(bad)
        assert g["false_reject_ci"][0] <= g["false_reject"] <= g["false_reject_ci"][1]
        assert g["recall_ci"][0] <= g["recall"] <= g["recall_ci"][1]


def test_a_reader_that_goes_away_ends_the_command_quietly(trained):
    """`costfilter test … | head` used to end with 'error: Broken pipe' (found by the docs run)."""
    import subprocess
    import sys
    from pathlib import Path

    ckpt = trained[2]
    exe = Path(sys.executable).parent / "costfilter"
    # `true` exits at once without reading, so the command's first line meets a closed pipe
    run = subprocess.run(["bash", "-c", f"'{exe}' info '{ckpt}' | true; echo \"${{PIPESTATUS[0]}}\""],
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.stdout.strip() == "141" and run.stderr == "", run.stderr
