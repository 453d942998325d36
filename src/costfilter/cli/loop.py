"""``costfilter versions``, ``audit`` and ``keys``: the operator's loop from a terminal — list and
roll back model versions, verify and export the audit trail, make API keys."""

from __future__ import annotations

import getpass
import secrets
import sys
from pathlib import Path

import click

from ..errors import CostfilterError
from .common import force_option, friendly

store_argument = click.argument("store", type=click.Path(path_type=Path))
db_option = click.option("--db", "db_url", default=None, help="The history's SQLAlchemy URL, if not the SQLite file "
                                                               "in STORE.")


def _open(store: Path, db_url: str | None, *, adopt: bool = True):  # type: ignore[no-untyped-def]
    try:
        from ..serve.store import HistoryStore
    except ImportError:
        raise CostfilterError("this needs the serve extra: pip install 'costfilter[serve]'") from None
    if db_url is None and not (store / "history.sqlite3").is_file():
        raise CostfilterError(f"{store}: no history database here (history.sqlite3); give the service's --store")
    return HistoryStore(store, db_url, adopt=adopt)


@click.group()
def versions() -> None:
    """Model versions of a service's STORE (applied verdicts, rollbacks)."""


@versions.command("list")
@store_argument
@db_option
@friendly
def versions_list(store: Path, db_url: str | None) -> None:
    """Every version, newest first; * marks the one in service."""
    from ..serve.versions import ModelVersions

    rows = ModelVersions(_open(store, db_url)).list()
    if not rows:
        click.echo("no model versions yet (the service records one when it starts)")
    for r in rows:
        parent = f"from v{r['parent']}" if r["parent"] is not None else "root"
        click.echo(f"{'*' if r['active'] else ' '} v{r['n']:<3} {r['sha256'][:12]}  {r['created']}  {r['user']:<12} "
                   f"{parent:<8} {r['note'] or ''}")


@versions.command("rollback")
@store_argument
@db_option
@click.option("--to", "to", type=int, default=None, help="The version to serve (default: the active one's parent).")
@click.option("--user", default=None, help="Who rolls back, for the audit trail [default: the login name].")
@friendly
def versions_rollback(store: Path, db_url: str | None, to: int | None, user: str | None) -> None:
    """Make an earlier version the active one. A running service follows within seconds."""
    from ..serve.versions import ModelVersions

    v = ModelVersions(_open(store, db_url))
    row = v.activate(v.rollback_target(to), user or f"cli {getpass.getuser()}", "rollback")
    click.echo(f"v{row['n']} ({row['sha256'][:12]}) is now active")


@click.group()
def audit() -> None:
    """The audit trail of a service's STORE."""


@audit.command("verify")
@store_argument
@db_option
@click.option("--anchor", "anchors", multiple=True, metavar="SEQ:HASH",
              help="A head kept elsewhere (from `audit anchor` or a station's anchor message); the trail must "
                   "still hold it, so cutting off its newest entries is named. Repeatable.")
@friendly
def audit_verify(store: Path, db_url: str | None, anchors: tuple[str, ...]) -> None:
    """Check the hash chain, and every prediction, verdict, model version and the active version
    against the entries that committed to them. Exit 1 naming each entry or row that was changed,
    removed, inserted or reordered."""
    from ..serve.audit import parse_anchor, verify

    try:
        pinned = [parse_anchor(a) for a in anchors]
    except ValueError as exc:
        raise CostfilterError(f"--anchor: {exc}") from None
    n, head, problems = verify(_open(store, db_url, adopt=False).engine, pinned)
    for p in problems:
        click.echo(p, err=True)
    if problems:
        click.echo(f"audit trail of {store}: {len(problems)} problem(s) in {n} entries", err=True)
        sys.exit(1)
    click.echo(f"audit trail of {store}: {n} entries, chain intact; head {head}")


@audit.command("anchor")
@store_argument
@db_option
@friendly
def audit_anchor(store: Path, db_url: str | None) -> None:
    """Print the trail's head as SEQ:HASH. Keep it somewhere else (a ticket, another system):
    `audit verify --anchor SEQ:HASH` then names any entry cut off after it."""
    from ..serve.audit import head

    seq, h = head(_open(store, db_url, adopt=False).engine)
    click.echo(f"{seq}:{h}")


@audit.command("export")
@store_argument
@db_option
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="CSV file to write.")
@force_option
@friendly
def audit_export(store: Path, db_url: str | None, out: Path, force: bool) -> None:
    """Write every entry of the audit trail to a CSV file (outside STORE)."""
    from ..serve.audit import export_csv

    _refuse_inside(out, store)
    history = _open(store, db_url, adopt=False)
    if history.db_file is not None and out.resolve().name.startswith(history.db_file.name) \
            and out.resolve().parent == history.db_file.parent:
        raise CostfilterError(f"{out}: is the history database {history.db_file} (or its journal) that the export "
                              "reads; write the export somewhere else")
    n = export_csv(history.engine, out, force)
    click.echo(f"wrote {n} entries to {out}")


def _refuse_inside(out: Path, store: Path) -> None:
    """A file written into the store could replace its database (or a record's file): refused,
    with or without --force."""
    target, root = out.resolve(), store.resolve()
    if target == root or root in target.parents:
        raise CostfilterError(f"{out}: is inside the store {store}, whose database and files it could overwrite; "
                              "write the export somewhere else")


@click.group()
def keys() -> None:
    """API keys with names and roles for `costfilter serve --key-file`."""


@keys.command("new")
@click.argument("name")
@click.option("--role", type=click.Choice(["operator", "admin"]), default="operator", show_default=True)
@click.option("--file", "key_file", type=click.Path(path_type=Path), default=None,
              help="Key file to add the entry to (YAML; holds the key's SHA-256, never the key).")
@friendly
def keys_new(name: str, role: str, key_file: Path | None) -> None:
    """Make a key for NAME: the key is printed once; its SHA-256 goes into the key file."""
    import yaml

    from ..atomic import write_text
    from ..serve.security import key_entry, key_name_problem, load_key_file

    problem = key_name_problem(name)
    if problem:
        raise CostfilterError(problem)
    key = secrets.token_urlsafe(32)
    sha, _ = key_entry(key, name, role)
    if key_file is not None:
        entries = []
        if key_file.exists():
            existing = load_key_file(str(key_file))
            if any(n == name for n, _ in existing.values()):
                raise CostfilterError(f"{key_file}: already has a key named {name!r}")
            entries = [{"name": n, "role": r, "sha256": h} for h, (n, r) in existing.items()]
        entries.append({"name": name, "role": role, "sha256": sha})
        write_text(key_file, yaml.safe_dump(entries, sort_keys=False))
        click.echo(f"added {name} ({role}) to {key_file}", err=True)
    else:
        click.echo(f"- {{name: {name}, role: {role}, sha256: {sha}}}", err=True)
    click.echo(key)


COMMANDS = [versions, audit, keys]
