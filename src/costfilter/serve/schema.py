"""The history database's tables, in one place: predictions, the outbox and inputs of a
station, the operators' verdicts, the model versions and the audit trail; and the one-way
migration that adds what a database written by an earlier version lacks."""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Column, DateTime, Float, Index, Integer, MetaData, String, Table, inspect, text
from sqlalchemy.engine import Engine

metadata = MetaData()

predictions = Table(
    "predictions", metadata,
    Column("id", String(32), primary_key=True),
    Column("created", DateTime(timezone=True), nullable=False, index=True),
    Column("filename", String(255), nullable=False),
    Column("image_sha256", String(64), nullable=False, index=True),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("score", Float, nullable=False),
    Column("decision", String(16), nullable=False, index=True),
    Column("typical_score", Float, nullable=False),
    Column("image_threshold", Float, nullable=False),
    Column("pixel_threshold", Float, nullable=False),
    Column("map_scale", Float, nullable=False),
    Column("model_sha256", String(64), nullable=False),
    Column("model_version", String(128), nullable=False),
    Column("regions", JSON, nullable=False),
    Column("files", JSON, nullable=False),
    #: the station that inspected it (None: an upload without a station) and its source
    Column("station", String(64), nullable=True, index=True),
    Column("source", String(64), nullable=True),
)

#: messages still to deliver (or delivered) per sink, in commit order: a sink takes its rows by
#: ``seq``, so delivery is in order; ``delivered`` is set only once the sink acknowledged the message
outbox = Table(
    "outbox", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("sink", String(64), nullable=False),
    Column("prediction_id", String(32), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("delivered", DateTime(timezone=True), nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", String(500), nullable=True),
    Index("outbox_pending", "sink", "delivered", "seq"),
)

#: inputs already inspected (a station's file or frame key → its prediction), so a restart after
#: the commit but before the file was moved does not inspect it again
inputs = Table(
    "inputs", metadata,
    Column("key", String(64), primary_key=True),
    Column("prediction_id", String(32), nullable=False),
)


#: an operator's verdict on a prediction; the latest per prediction counts, earlier ones stay
verdicts = Table(
    "verdicts", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("prediction_id", String(32), nullable=False, index=True),
    Column("verdict", String(16), nullable=False),  # good | defect
    Column("defect_type", String(64), nullable=True),
    Column("note", String(500), nullable=True),
    Column("user", String(64), nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
)

#: every model version the service has served: content-addressed checkpoint files under the
#: store's ``models/`` folder; ``active`` marks the one in service (exactly one)
versions = Table(
    "versions", metadata,
    Column("n", Integer, primary_key=True, autoincrement=True),
    Column("sha256", String(64), nullable=False, unique=True),
    Column("file", String(255), nullable=False),
    Column("parent", Integer, nullable=True),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("user", String(64), nullable=False),
    Column("note", String(500), nullable=True),
    Column("summary", JSON, nullable=False),
    Column("active", Boolean, nullable=False, default=False),
)

#: the append-only, hash-chained record of who did what (:mod:`.audit`)
audit_log = Table(
    "audit", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("created", String(32), nullable=False),
    Column("user", String(64), nullable=False),
    Column("action", String(32), nullable=False, index=True),
    Column("subject", String(64), nullable=True, index=True),
    Column("details", JSON, nullable=False),
    Column("prev", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)


def migrate(engine: Engine) -> None:
    """Create what is missing: tables, and the columns later versions added to ``predictions``
    (nullable, so earlier rows stay valid). Never drops or changes anything."""
    metadata.create_all(engine)
    have = {c["name"] for c in inspect(engine).get_columns("predictions")}
    with engine.begin() as conn:
        for col in predictions.columns:
            if col.name not in have:
                kind = col.type.compile(engine.dialect)
                conn.execute(text(f'ALTER TABLE predictions ADD COLUMN "{col.name}" {kind}'))
