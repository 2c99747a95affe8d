"""Process-wide settings, read once from `KFAC_*` environment variables (and a `.env` file).

Every process of kfac-lab (API, worker, CLI) reads the same `Settings`, so one set of
environment variables selects the mode: with nothing set, everything lives under one embedded
data directory (`KFAC_HOME`, default `./.kfac-lab`) with a SQLite database and a filesystem
broker; setting `KFAC_DATABASE_URL` / `KFAC_BROKER_URL` switches to PostgreSQL and Redis.

Paths that default to places inside `home` are filled in after validation, so that setting only
`KFAC_HOME` moves all of them together.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Seconds = Annotated[float, Field(gt=0)]
"""A duration or a time limit, in seconds."""


class Settings(BaseSettings):
    """All tunables of kfac-lab; each field `x` is read from the variable `KFAC_X`."""

    model_config = SettingsConfigDict(
        env_prefix="KFAC_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    home: Path = Field(
        default_factory=lambda: Path.cwd() / ".kfac-lab",
        description="Embedded data directory: SQLite database, broker queues, artifacts.",
    )
    database_url: str = Field(
        default="",
        description="SQLAlchemy URL; empty means the SQLite file `home/kfac.db`. "
        "`postgresql://` URLs are used through psycopg 3.",
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker URL (e.g. redis://host:6379/0); None means the embedded "
        "filesystem broker under `home/broker`.",
    )
    artifacts_dir: Path | None = Field(
        default=None, description="Checkpoints and other run files; default `home/artifacts`."
    )
    data_dir: Path | None = Field(
        default=None, description="Dataset cache (MNIST IDX files, ...); default `home/data`."
    )
    check_data: bool = Field(
        default=True,
        description="Refuse at create a run whose dataset has files missing in this process's "
        "data_dir (unless the run sets dataset.download). Turn off where the API does not "
        "share the workers' disk.",
    )
    admin_token: str | None = Field(
        default=None,
        repr=False,
        description="Bearer token for writes; embedded mode generates and stores one if unset.",
    )
    heartbeat_timeout_s: Seconds = Field(
        default=60.0, description="A running run whose heartbeat is older is re-queued."
    )
    tracking_timeout_s: Seconds = Field(
        default=300.0,
        description="A tracked run (a script's, through kfac_lab) that has not been heard from "
        "for this long is failed by the recovery pass; its client beats well within it.",
    )
    max_streams_per_client: int = Field(
        default=100,
        ge=1,
        description="Open event streams one token (the admin's, or one share link's) may hold; "
        "the next is answered 429.",
    )
    worker_memory_bytes: int = Field(
        default_factory=lambda: physical_memory_bytes() // 2,
        gt=0,
        description="The memory one run may use; a run estimated to need more is refused. "
        "Default: half of this machine's physical memory.",
    )
    run_time_limit_s: Seconds = Field(
        default=24 * 3600.0,
        description="A run estimated to train longer is refused; one that still overruns it "
        "is stopped and fails.",
    )
    node_address: str | None = Field(
        default=None,
        description="The address other machines reach this worker at, published when it is "
        "rank 0 of a run over several nodes; default: this machine's host name.",
    )
    node_join_timeout_s: Seconds = Field(
        default=300.0,
        description="How long rank 0 of a run over several nodes waits for the other nodes "
        "(free workers on the run's queue) to join; a node that does not fails the run.",
    )
    worker_flops: float = Field(
        default=2e10,
        gt=0,
        description="Floating-point operations per second a worker sustains, which turns the "
        "estimated cost of a step into seconds (default: two CPU cores, float32).",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins allowed by CORS, comma-separated; empty (closed) by default.",
    )
    public_url: str | None = Field(
        default=None,
        description="Base URL printed and used in share links, e.g. https://lab.example.org; "
        "default: derived from the request.",
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        """Accept `a,b` from the environment as well as a list."""
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @model_validator(mode="after")
    def _fill_home_defaults(self) -> Settings:
        """Place everything that was not set explicitly inside `home`."""
        self.home = self.home.expanduser()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'kfac.db'}"
        if self.artifacts_dir is None:
            self.artifacts_dir = self.home / "artifacts"
        if self.data_dir is None:
            self.data_dir = self.home / "data"
        return self


def physical_memory_bytes() -> int:
    """This machine's physical memory, from sysconf (no psutil); 8 GB where it cannot say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 8 * 1024**3


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once; tests call `get_settings.cache_clear()` to re-read."""
    return Settings()
