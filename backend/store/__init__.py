"""The experiment store: one schema (SQLAlchemy 2) on SQLite or PostgreSQL, shared by the API
and the workers. It imports neither FastAPI nor torch, so both sides can use it.

* `models` — the tables; `migrate.upgrade(url)` creates / updates them (Alembic).
* `db` — engines and `session_scope()`; every other function takes the caller's `Session`.
* `writes` — experiments and the run life cycle (create, claim, heartbeat, status, cancel,
  stale-run recovery), each change logged as an event.
* `results` — a run's metric points and curvature snapshots (idempotent writes).
* `queries` — reads for the API: experiments, downsampled metrics, snapshots, events.
* `access` — share-link tokens and the embedded admin token.
* `rollups`, `snapshots` — how metrics and matrices are stored compactly (internal).

Typical use::

    with session_scope() as session:
        write_metrics(session, run_id, [("train_loss", step, wall_time, loss)])
"""
