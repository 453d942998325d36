"""The model card: what a model file holds, in a few lines (``costfilter info``), the same for a
checkpoint and an exported ONNX file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .decisions import OperatingPoint
from .tables import format_table

#: how each calibration source reads in the model card
SOURCES = {"holdout": "held out of the bank", "leave-one-out": "every fit image, scored without its own bank rows",
           "fit": "fit images as they are: optimistic", "new": "given to calibrate"}


#: how a file's signature status reads in the model card
SIGNATURES = {"valid": "valid (HMAC-SHA256, checked with the signing key set here)",
              "unchecked": "present, not checked (no signing key set: COSTFILTER_SIGN_KEY or --sign-key)",
              "unsigned": "none"}


def _bank_rule(memory: Any) -> str:
    if memory.coreset_ratio is not None:
        return f"coreset ratio {memory.coreset_ratio}"
    return f"at most {memory.bank_size} rows"


def model_card(path: Path, det: Any, onnx: bool) -> list[str]:
    """Lines describing ``det`` (a ``Detector`` or ``OnnxDetector``) loaded from ``path``."""
    cfg, state, t = det.config, det.state, det.thresholds
    f = cfg.features
    lines = [f"model        {path}" + (" (ONNX, runs with onnxruntime)" if onnx else ""),
             f"sha256       {state.sha256}",
             f"signature    {SIGNATURES.get(state.signature or 'unsigned', state.signature)}"]
    if onnx:
        precision = getattr(det, "precision", "fp32")
        lines.append(f"exported     from checkpoint sha256 {state.source_sha256 or '?'}"
                     + ("; backbone quantised to INT8" if precision == "int8" else ""))
    lines.append(f"method       {cfg.method}" + (f" (preset {cfg.preset})" if cfg.preset else "")
                 + f"; backbone {f.backbone} layers {list(f.layers)}"
                 + (f" in {f.layer_groups} groups" if f.layer_groups else "") + f"; input {f.image_size} px"
                 + (f"; tiles {cfg.tiling.size} px, overlap {cfg.tiling.overlap}" if cfg.tiling.size else ""))
    if onnx:
        lines.append(f"categories   {', '.join(state.categories)}")
    else:
        data = state.training_data or {}
        lines.append(f"trained on   {state.n_train_images} normal images ({', '.join(state.categories)}"
                     + (f"; few-shot: {cfg.shots} per category, seed {cfg.seed}" if cfg.shots else "") + "); "
                     f"data digest {data.get('sha256', '?')[:16]}… ({data.get('bytes', 0) / 1e6:.1f} MB)")
        if state.bank_size is not None:
            lines.append(f"bank         {state.bank_size} patches ({_bank_rule(cfg.memory)}, {cfg.memory.sampler})")
        for step in getattr(state, "taught", []):
            lines.append(f"taught       {step['images']} confirmed-good image(s), {step['rows']} bank rows, "
                         f"{step['created']}" + (f" by {step['by']}" if step.get("by") else ""))
        screening = getattr(state, "screening", None)
        if screening is not None:
            flagged = screening.get("flagged", [])
            lines.append(f"screening    {len(flagged)} of {screening['n_images']} training images flagged as possible "
                         f"defects, {len(screening.get('removed', []))} left out (contamination "
                         f"{screening['contamination']})")
            lines += [f"  flagged    {f['path']} (score {f['score']:.4f}, z {f['z']:.1f}"
                      + (", left out)" if f.get("removed") else ")") for f in flagged[:10]]
            if len(flagged) > 10:
                lines.append(f"  … and {len(flagged) - 10} more (fit record)")
    learned = getattr(state, "learned", [])
    if learned:
        lines.append(f"categories   {len(learned)}, learned one after another; each image is scored as the nearest "
                     "and decided with that one's thresholds:")
        for i, c in enumerate(learned, start=1):
            ct = c.thresholds
            lines.append(f"  {i}. {c.name}: {c.n_train_images} normal images, {c.bank_rows} bank rows; image threshold "
                         f"{ct.image:.4f}, pixel {ct.pixel:.4f}, from {ct.n_calibration} good images "
                         f"({SOURCES.get(ct.source, '?')}); added {c.created}")
    elif t is not None:
        lines.append(f"thresholds   image {t.image:.4f}" + (f", review above {t.review:.4f}" if t.review is not None else "")
                     + f", pixel {t.pixel:.4f}; from {t.n_calibration} good images ({SOURCES.get(t.source, '?')})"
                     + (f"; unknown if typical patch > {t.ood_limit:.3f}" if t.ood_limit is not None else ""))
    if state.training is not None:
        tr = state.training
        chosen = chosen_text(tr.chosen)
        lines.append(f"training     {tr.steps} steps ({tr.stopped_by}), best validation step {tr.best_step}"
                     + (f"; chosen on validation: {chosen}" if chosen else ""))
        if tr.started_from:
            lines.append(f"started from {tr.started_from['from']} (sha256 {tr.started_from['sha256'][:12]}…)")
    if not onnx:
        versions = state.environment.get("versions", {})
        lines.append(f"created      {state.created} with costfilter {versions.get('costfilter', '?')}, "
                     f"torch {versions.get('torch', '?')}"
                     # a ViT's features depend on the transformers that read it
                     + (f", transformers {versions.get('transformers', '?')}" if f.backbone.startswith("hf:") else ""))
    return lines


def points_table(points: list[OperatingPoint]) -> str:
    """The operating-point table, then a warning line for each point its images cannot confirm."""
    rows = [[p.name, f"{p.target_false_reject:g}", f"{p.threshold:.4f}",
             f"{p.false_reject:.2%} [{p.ci_low:.2%}, {p.ci_high:.2%}]", p.n_good] for p in points]
    out = [format_table(["operating point", "target false-reject", "image threshold",
                         "false-reject on calibration good images (95 % CI)", "good images"], rows)]
    out += [f"warning ({p.name}): {p.warning}" for p in points if p.warning]
    return "\n".join(out)


def chosen_text(chosen: dict[str, Any]) -> str:
    """What validation chose besides the weights, in a line: CostFilter-AD explains its λ in a
    sentence; other methods report plain numbers (e.g. DFM's temperature)."""
    return chosen.get("why") or ", ".join(f"{k} {v:g}" for k, v in chosen.items() if isinstance(v, (int, float)))
