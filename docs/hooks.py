"""MkDocs hooks: the reference pages are written from the code at build time, so they cannot drift.

A page holds a marker ``<!-- generate:NAME -->``, replaced by:

* ``cli``: every command of the ``costfilter`` click group, its usage, help and options;
* ``config``: every field of :class:`costfilter.config.DetectorConfig` and its parts, with type,
  default and the ``#:`` comment written above it in the source;
* ``station``: the same for the station file's dataclasses (:mod:`costfilter.station.config`);
* ``not-run``: the code blocks the docs tests do not run, and why (``docs_blocks.py``).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import docs_blocks

from costfilter.tables import format_table


def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def cli_reference() -> str:
    import click

    from costfilter.cli import main

    out = []

    def walk(cmd: click.Command, path: list[str]) -> None:
        ctx = click.Context(cmd, info_name=" ".join(path))
        if isinstance(cmd, click.Group):
            for name in sorted(cmd.commands):
                walk(cmd.commands[name], path + [name])
            return
        out.append(f"## `{' '.join(path)}`\n")
        out.append("```text\n" + cmd.get_usage(ctx).strip() + "\n```\n")
        out.append(inspect.cleandoc(cmd.help or "") + "\n")
        rows = []
        for p in cmd.params:
            if isinstance(p, click.Argument):
                rows.append((f"`{p.name.upper()}`", "argument", "required" if p.required else "optional", ""))
            elif isinstance(p, click.Option) and not p.hidden:
                names = ", ".join(f"`{o}`" for o in p.opts + p.secondary_opts)
                unset = p.default is None or "Sentinel" in repr(p.default) or (p.is_flag and p.default is False)
                default = "required" if p.required else "" if unset else f"`{p.default}`"
                kind = "flag" if p.is_flag else _cell(p.type.name)
                rows.append((names, kind, default, _cell(p.help or "")))
        if rows:
            out.append(format_table(["option", "type", "default", "what"], [(a, b, _cell(c), d) for a, b, c, d in rows]))
            out.append("")

    walk(main, ["costfilter"])
    return "\n".join(out)


def _field_notes(cls: type) -> dict[str, str]:
    """Each field's comment: the ``#:`` lines above it, or a ``#`` comment on its own line."""
    lines, _ = inspect.getsourcelines(cls)
    notes: dict[str, str] = {}
    above: list[str] = []
    for line in lines[1:]:
        s = line.strip()
        if s.startswith("#:"):
            above.append(s[2:].strip())
            continue
        m = re.match(r"(\w+)\s*:", s)
        if m and not s.startswith(("def ", "@", "return")):
            trailing = s.split("  # ", 1)[1] if "  # " in s else ""
            notes[m.group(1)] = " ".join(above) or trailing
        above = []
    return notes


def dataclass_tables(classes: list[type], prefix: dict[type, str]) -> str:
    out = []
    for cls in classes:
        name = prefix.get(cls, cls.__name__)
        doc = inspect.cleandoc(cls.__doc__ or "")
        if doc.startswith(f"{cls.__name__}("):  # the signature dataclasses write where there is no docstring
            doc = ""
        notes = _field_notes(cls)
        out.append(f"## `{name}`\n\n{doc}\n")
        rows = []
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                default = f"`{f.default!r}`"
            elif f.default_factory is not dataclasses.MISSING:
                value = f.default_factory()
                default = "see below" if dataclasses.is_dataclass(value) else f"`{value!r}`"
            else:
                default = "required"
            rows.append((f"`{f.name}`", f"`{_cell(f.type)}`", _cell(default), _cell(notes.get(f.name, ""))))
        out.append(format_table(["field", "type", "default", "what"], rows) + "\n")
    return "\n".join(out)


def config_reference() -> str:
    from costfilter import config

    classes: list[type] = [config.DetectorConfig]
    prefix: dict[type, str] = {}

    def parts(cls: type, path: str) -> None:
        for f in dataclasses.fields(cls):
            if f.default_factory is dataclasses.MISSING:
                continue
            value = f.default_factory()
            if dataclasses.is_dataclass(value) and type(value) not in prefix:
                prefix[type(value)] = f"{path}{f.name}: {type(value).__name__}"
                classes.append(type(value))
                parts(type(value), f"{path}{f.name}.")

    parts(config.DetectorConfig, "")
    return dataclass_tables(classes, prefix)


def station_reference() -> str:
    from costfilter.station import config as station

    tree = ast.parse(inspect.getsource(station))
    names = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    from costfilter.drift import DriftConfig

    classes = [getattr(station, n) for n in names if dataclasses.is_dataclass(getattr(station, n))]
    classes.sort(key=lambda c: c.__name__ != "StationConfig")
    return dataclass_tables(classes + [DriftConfig], {DriftConfig: "drift: DriftConfig"})


GENERATORS = {"cli": cli_reference, "config": config_reference, "station": station_reference,
              "not-run": docs_blocks.not_run_page}


def on_page_markdown(markdown: str, **_: Any) -> str:
    for name, make in GENERATORS.items():
        marker = f"<!-- generate:{name} -->"
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return markdown
