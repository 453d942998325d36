"""Regenerate the result tables of the README and the docs site from benchmarks/results/*.json
(never typed by hand).

    python -m benchmarks.make_readme

Each table sits between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->`` markers, in the
README (the headline table) and on the site's pages under ``docs/`` (every table).
"""

import json
import re
from pathlib import Path

from .bank_search import table as bank_search_table
from .contamination import contamination_tables
from .continual import continual_tables
from .costfilter_ad import costfilter_tables
from .costfilter_reference import reference_table
from .costfilter_transfer import transfer_table
from .deploy import export_table, load_table
from .dfm_e2e import dfm_table
from .drift import table as drift_table
from .elpv import elpv_table
from .evaluation_cost import evaluation_cost_table
from .fewshot import table as fewshot_table
from .image_size import table as image_size_table
from .int8 import int8_table
from .latency import latency_table
from .loop import table as loop_table
from .masked import masked_tables
from .memory_bank import memory_bank_tables
from .methods import methods_table
from .paper import table as paper_table
from .ray_cluster import table as ray_cluster_table
from .ray_scale import ray_scale_table
from .robustness import robustness_table
from .station import table as station_table
from .zeroshot import zeroshot_tables

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def provenance(p: dict) -> str:
    env = p["environment"]
    return (f"\n\n<sub>Measured at commit `{env['git_commit']}`, {env['cpu_count']} CPUs, torch "
            f"{env['versions'].get('torch')}, seed {p.get('seed')}; source: "
            f"`benchmarks/results/{p['benchmark']}.json`.</sub>")


def tables() -> dict[str, str]:
    out = {}
    makers = {"elpv": elpv_table, "memory_bank": memory_bank_tables, "masked": masked_tables,
              "methods": methods_table, "costfilter": costfilter_tables, "export": export_table,
              "load_test": load_table, "robustness": robustness_table,
              "costfilter_transfer": transfer_table, "ray_scale": ray_scale_table, "ray_cluster": ray_cluster_table,
              "zeroshot": zeroshot_tables, "dfm_e2e": dfm_table, "continual": continual_tables,
              "contamination": contamination_tables, "evaluation_cost": evaluation_cost_table,
              "station": station_table, "costfilter_reference": reference_table,
              "loop": loop_table, "drift": drift_table, "fewshot": fewshot_table,
              "paper": paper_table, "image_size": image_size_table, "latency": latency_table,
              "int8": int8_table, "bank_search": bank_search_table}
    for name, make in makers.items():
        path = RESULTS / f"{name}.json"
        if path.is_file():
            p = json.loads(path.read_text())
            out[name] = make(p) + provenance(p)
    return out


def main() -> None:
    pages = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
    found = set()
    made = tables()
    for page in pages:
        text = original = page.read_text()
        for name, table in made.items():
            pattern = re.compile(rf"(<!-- table:{name} -->\n)(?:.*?\n)?(<!-- /table:{name} -->)", re.DOTALL)
            if pattern.search(text):
                found.add(name)
                text = pattern.sub(lambda m, t=table: m.group(1) + t + "\n" + m.group(2), text)
        if text != original:
            page.write_text(text)
    for name in sorted(set(made) - found):
        print(f"no page has markers for {name}; skipped")
    print("tables regenerated")


if __name__ == "__main__":
    main()
