"""The one training loop of the trained methods (DFM, CostFilter-AD): a step budget and a
wall-clock budget, validation every few steps with the best weights kept, an optional
learning-rate schedule on the validation score, a resumable state file, and a report.

The state file (``fit --resume FILE``) holds everything a run depends on: the trained weights, the
best ones so far, the optimiser's moments, the schedule, torch's random state, the step and the
report; it is written atomically at every validation and at least every ``save_every_s``, so a
resumed run continues exactly where the saved one was (each step's data comes from a generator
seeded by the step). Beside it, ``FILE.curve.jsonl`` logs each step's loss and each validation as
the run goes, for watching a long run in the background.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..atomic import write_text, write_with
from ..compute import CPU, Compute
from ..config import TrainingConfig
from ..errors import CostfilterError
from .report import TrainReport

#: ``step(k, rng) → loss`` for training step ``k``, drawing its data from ``rng``
Step = Callable[[int, np.random.Generator], torch.Tensor]
#: ``validate() → {"score": float, "chosen": {...}, other figures}``; higher score is better
Validate = Callable[[], dict[str, Any]]


def train(module: nn.Module, keep: Callable[[str], bool], step: Step, validate: Validate, opt: torch.optim.Optimizer,
          cfg: TrainingConfig, seed: int, *, validate_first: bool = False, plateau: bool = False,
          resume: Path | None = None, fingerprint: str = "", settings: dict[str, Any] | None = None,
          refingerprint: Callable[[dict[str, Any]], str] | None = None,
          progress: Callable[[int, float], None] | None = None,
          observer: Callable[[int, nn.Module], None] | None = None, compute: Compute = CPU) -> TrainReport:
    """Train the entries of ``module.state_dict()`` that ``keep`` names, with ``opt``.

    Stops after ``cfg.steps`` steps or ``cfg.time_budget_s`` seconds. Validates every
    ``cfg.val_every`` steps and at the end (and before the first step with ``validate_first``,
    so training has to beat its starting point); the weights with the best validation score are
    loaded at the end and what that validation chose is ``report.chosen``. ``plateau`` halves the
    learning rate when the score stalls. Each step draws its data from a generator seeded with
    ``(seed, step)``, so a run resumed from ``resume`` (saved at every validation, refused when its
    ``fingerprint`` differs) replays the same data. ``settings`` (the config, saved with the state)
    and ``refingerprint`` (a saved config → today's fingerprint) let a state written by an older
    version resume when its config, read by today's code, is today's (fields added since, at
    their defaults, change no fingerprint). ``observer(step, module)`` is called after
    each validation (benchmarks record learning curves with it). Each step runs under
    ``compute``'s autocast (float16 with loss scaling); the module is already on its device.
    """
    def kept() -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in module.state_dict().items() if keep(k)}

    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=2) if plateau else None
    scaler = compute.grad_scaler()
    report = TrainReport()
    best_state, best_score, done = kept(), float("-inf"), 0
    if resume is not None and resume.is_file():
        best_state, meta = _load_state(resume, module, opt, fingerprint, refingerprint)
        done, best_score = meta["step"], meta["best_score"]
        report = TrainReport.from_dict(meta["report"])
        report.resumed_from = done
        if sched is not None and meta.get("schedule"):
            sched.load_state_dict(meta["schedule"])
    curve = _Curve(resume, done) if resume is not None else None
    previous_s = report.seconds  # a resumed run's budget counts the time already spent

    def validate_at(at: int) -> float:
        nonlocal best_score, best_state
        v = validate()
        report.validation.append({"step": at, **{k: x for k, x in v.items() if k != "chosen"}})
        if v["score"] > best_score:
            best_score, report.best_step, report.chosen = v["score"], at, dict(v.get("chosen", {}))
            best_state = kept()
        if curve is not None:
            curve.write({"step": at, "validation": {k: x for k, x in v.items() if k != "chosen"}})
        if observer is not None:
            observer(at, module)
        return v["score"]

    if validate_first and not report.validation:
        validate_at(0)
    t0 = saved_at = time.perf_counter()

    def save() -> None:
        nonlocal saved_at
        assert resume is not None
        report.seconds = previous_s + time.perf_counter() - t0
        _save_state(resume, module, keep, opt, best_state, {
            "step": done, "best_score": best_score, "report": report.to_dict(), "fingerprint": fingerprint,
            "settings": settings,
            "schedule": sched.state_dict() if sched is not None else None})
        saved_at = time.perf_counter()

    while done < cfg.steps:
        if cfg.time_budget_s and previous_s + time.perf_counter() - t0 > cfg.time_budget_s:
            report.stopped_by = "time budget"
            break
        module.train()
        with compute.autocast():
            loss = step(done, np.random.default_rng([seed, done]))
        opt.zero_grad()
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        done += 1
        report.losses.append(float(loss.detach()))
        if curve is not None:
            curve.write({"step": done, "loss": report.losses[-1]})
        if progress:
            progress(1, report.losses[-1])
        if done % cfg.val_every == 0 or done == cfg.steps:
            score = validate_at(done)
            if sched is not None:
                sched.step(score)
            if resume is not None:
                save()
        elif resume is not None and time.perf_counter() - saved_at > cfg.save_every_s:
            save()
    if not report.validation or report.validation[-1]["step"] != done:
        validate_at(done)
    if curve is not None:
        curve.close()
    module.load_state_dict(best_state, strict=False)
    module.eval()
    report.steps = done
    report.seconds = previous_s + time.perf_counter() - t0
    return report


class _Curve:
    """``STATE.curve.jsonl``: one line per step (loss) and per validation, each stamped with the
    wall clock (``"time"``, Unix seconds) so a step rate can be read from any stretch the run had
    the machine to itself. On resume, lines past the saved step (written by the run that was
    killed) are dropped first."""

    def __init__(self, state: Path, done: int):
        self.path = state.with_name(state.name + ".curve.jsonl")
        if self.path.is_file():
            kept = []
            for line in self.path.read_text().splitlines():
                try:
                    if json.loads(line)["step"] <= done:
                        kept.append(line)
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by the kill
            write_text(self.path, "".join(x + "\n" for x in kept))
        self.fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - open for the whole run

    def write(self, record: dict[str, Any]) -> None:
        self.fh.write(json.dumps({**record, "time": round(time.time(), 3)}) + "\n")
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


def _save_state(path: Path, module: nn.Module, keep: Callable[[str], bool], opt: torch.optim.Optimizer,
                best: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    tensors = {f"model.{k}": v.cpu() for k, v in module.state_dict().items() if keep(k)}
    tensors.update({f"best.{k}": v.cpu() for k, v in best.items()})
    for pid, st in opt.state_dict()["state"].items():
        for name, v in st.items():
            tensors[f"opt.{pid}.{name}"] = torch.as_tensor(v, device="cpu").clone()
    tensors["rng.torch"] = torch.get_rng_state()  # a step that draws from torch's own generator
    meta = dict(meta, lr=opt.param_groups[0]["lr"])
    write_with(path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                                           metadata={"meta": json.dumps(meta)}))


def _load_state(path: Path, module: nn.Module, opt: torch.optim.Optimizer, fingerprint: str,
                refingerprint: Callable[[dict[str, Any]], str] | None = None
                ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})["meta"])
    except (SafetensorError, OSError, KeyError, ValueError):
        raise CostfilterError(f"{path}: not a costfilter training state") from None
    same = meta.get("fingerprint") == fingerprint
    if not same and meta.get("settings") is not None and refingerprint is not None:
        try:
            same = refingerprint(meta["settings"]) == fingerprint
        except (CostfilterError, TypeError, KeyError, ValueError):
            same = False  # not a config today's code reads
    if not same:
        raise CostfilterError(f"{path}: training state was saved under another configuration; "
                              "delete it or use the same options")
    tensors = load_file(str(path))
    module.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=False)
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    sd = opt.state_dict()
    sd["state"] = state
    opt.load_state_dict(sd)
    for group in opt.param_groups:
        group["lr"] = meta["lr"]
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    return best, meta


def config_fingerprint(config: dict[str, Any], section: str) -> str:
    """SHA-256 of a config dict without ``<section>.training.steps`` / ``time_budget_s``: how long
    to train may change between runs of one training (that is what resuming is for); nothing else may."""
    import hashlib

    same = json.loads(json.dumps(config))
    for key in ("steps", "time_budget_s"):
        same[section]["training"].pop(key, None)
    return hashlib.sha256(json.dumps(same, sort_keys=True).encode()).hexdigest()
