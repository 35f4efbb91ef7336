"""One validated settings object: config.yaml, overridden by ISE__SECTION__KEY variables."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from image_search.embedding.runtime import (
    PrecisionSetting,
    RuntimeChoice,
    RuntimeSetting,
    check_pair,
    model_id,
    resolve,
)
from image_search.errors import ConfigError

ENV_PREFIX = "ISE__"
DEFAULT_CONFIG = Path("config.yaml")
_DEFAULT_SECRETS = {"minioadmin", "changeme", "password", ""}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSettings(_Section):
    name: Literal["efficientnet-lite0", "resnet50"] = "efficientnet-lite0"
    weights: str | None = None
    weights_sha256: str | None = None
    cache_dir: str = "./data/models"
    threads: int = Field(1, ge=1, le=64)
    # auto: chosen from this machine's CPU (image_search/embedding/runtime.py says how).
    runtime: RuntimeSetting = "auto"
    precision: PrecisionSetting = "auto"

    @model_validator(mode="after")
    def _runtime_runs_precision(self) -> ModelSettings:
        check_pair(self.runtime, self.precision)  # ConfigError, as is, for onnx+bf16, torch+int8
        return self

    def runtime_choice(self) -> RuntimeChoice:
        """The runtime and precision this process runs, `auto` resolved, with the reason."""
        return resolve(self.name, self.runtime, self.precision)

    @property
    def model_id(self) -> str:
        """The identity a vector collection is bound to: model, runtime and precision."""
        return model_id(self.name, self.runtime_choice())


class LimitSettings(_Section):
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(40_000_000, ge=64 * 64)
    max_batch_files: int = Field(64, ge=1, le=1024)
    max_search_limit: int = Field(1000, ge=1, le=16384)
    # A batch request's whole body; it is read from disk-spooled parts and sent on in slices
    # of at most batch_slice_bytes, so no process holds a whole batch.
    max_batch_bytes: int = Field(256 * 1024 * 1024, ge=1024)
    batch_slice_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    # Admission per Ingress replica: heavy requests (uploads, searches, files) run at most
    # max_inflight at once and max_waiting wait behind them for at most queue_timeout_s;
    # beyond that they get 503 + Retry-After at once, and light routes never wait at all.
    max_inflight: int = Field(16, ge=1, le=4096)
    max_waiting: int = Field(64, ge=0, le=65536)
    queue_timeout_s: float = Field(15.0, gt=0)
    retry_after_s: int = Field(2, ge=1, le=3600)
    # A client that sends no body bytes for this long is cut off (408): slow uploads must not
    # hold an admission slot forever.
    body_idle_timeout_s: float = Field(30.0, gt=0)
    # One upload's or search's trip through the graph, at most; then 503 + Retry-After. A
    # call under way on a replica whose node dies may never answer (deployments.flows
    # .bounded); this is far above any load's latency (p99 under 2 s at 16 clients on the
    # slowest host measured, docs/performance.md).
    graph_timeout_s: float = Field(30.0, gt=0)


class StoreSettings(_Section):
    metadata_uri: str = "sqlite:///./data/meta.db"
    objects_uri: str = "file://./data/objects"
    vectors_uri: str = "./data/vectors.db"
    vectors_token: str = ""  # Milvus auth ("user:password" or an API key), from the environment
    collection: str = Field("image_vectors", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
    s3_endpoint: str = "127.0.0.1:9000"
    s3_access_key: str = "minioadmin"
    s3_secret_key: str = "minioadmin"
    s3_secure: bool = False
    s3_region: str | None = None
    file_url_mode: Literal["api", "presigned"] = "api"
    presign_seconds: int = Field(3600, ge=1, le=7 * 24 * 3600)
    index_type: Literal["HNSW", "FLAT", "IVF_FLAT", "IVF_SQ8", "AUTOINDEX"] = "HNSW"
    index_params: dict[str, Any] = Field(default_factory=lambda: {"M": 16, "efConstruction": 200})
    search_params: dict[str, Any] = Field(default_factory=lambda: {"ef": 128})
    consistency_level: Literal["Strong", "Session", "Bounded", "Eventually"] = "Strong"
    # Searches only: Strong makes each one wait for Milvus's next time tick (about 200 ms per
    # search on a Milvus server, measured), Session waits only for this process's own writes.
    search_consistency_level: Literal["Strong", "Session", "Bounded", "Eventually"] = "Session"
    lite_port: int = Field(19531, ge=1, le=65535)
    connect_timeout_s: float = Field(5.0, gt=0)

    @field_validator("consistency_level", "search_consistency_level")
    @classmethod
    def _read_after_write(cls, v: str) -> str:
        # Bounded/Eventually let a search miss an image that was just uploaded (a defect of
        # the original); refuse them rather than document a surprise.
        if v not in ("Strong", "Session"):
            raise ValueError("consistency levels must be Strong or Session (read-after-write)")
        return v


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    public_url: str | None = None
    thumbnail_size: int = Field(256, ge=32, le=1024)
    admin_token: str | None = None  # when set, DELETE /meta/image/images needs X-Admin-Token


_LOOPBACK_HOSTS = {"127.0.0.1", "::1", "localhost"}
_ORIGIN = r"^https?://[A-Za-z0-9.\-\[\]:]+$"


class SecuritySettings(_Section):
    # API keys (image-search keys create): None = on, except in development on a loopback
    # host, where only this machine can reach the port. Production refuses false.
    require_keys: bool | None = None
    # Other sites' origins (https://app.example.com) allowed to call the API from a browser:
    # CORS and the cross-site-request check. Empty: only the service's own pages.
    cors_origins: list[str] = Field(default_factory=list)
    # Host header allow-list (example.com, *.example.com); empty = any. Set it when the port is
    # reachable by name: it also stops DNS-rebinding pages from talking to the service.
    allowed_hosts: list[str] = Field(default_factory=list)
    # Verified keys are remembered this long per Ingress replica: a revoked key keeps working
    # at most this long.
    key_cache_seconds: float = Field(5.0, ge=0, le=300)

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        # "*" would let every site past the cross-site check; origins have no path.
        bad = [o for o in v if not re.match(_ORIGIN, o.rstrip("/"))]
        if bad:
            raise ValueError(f"cors_origins must be scheme://host[:port] origins, not {bad}")
        return [o.rstrip("/").lower() for o in v]


class DuplicateSettings(_Section):
    """Duplicate review (GET /duplicates, pipelines.duplicates); docs/duplicates.md."""

    # Squared-L2 distance (the one search returns) at or below which two images are grouped.
    # 0.2: the largest threshold whose groups keep pair precision >= 0.95 on both halves of
    # the evaluation set (0.994 tuning, 0.973 held-out; 0.5 gave 0.82): docs/evaluation.md.
    threshold: float = Field(0.2, ge=0, le=4)
    # The highest threshold a request may ask for: beyond it unrelated photos start to join
    # (the closest different pair measured is 1.00). Online neighbours are searched this far.
    max_threshold: float = Field(1.0, gt=0, le=4)
    # Neighbours kept per image (the range search's top-k): a larger group still forms
    # through its members' own neighbours.
    neighbors: int = Field(32, ge=1, le=1024)
    # Libraries with more images are refused by the HTTP route (413): run the job instead.
    max_online_images: int = Field(5_000, ge=1)
    # Query vectors per range-search call.
    search_batch: int = Field(256, ge=1, le=4096)

    @model_validator(mode="after")
    def _default_within_max(self) -> DuplicateSettings:
        if self.threshold > self.max_threshold:
            raise ValueError("duplicates.threshold must be at most duplicates.max_threshold")
        return self


SearchMode = Literal["global", "regions"]


class SearchSettings(_Section):
    """Region search (image_search/regions.py; figures in docs/evaluation.md and the README)."""

    # Build new collections with region vectors (a thumbnail view and ~9 R-MAC regions per
    # image in a second collection: ~10x the vectors, ~3x the embedding work per upload). An
    # existing collection keeps what it was built with: `python -m pipelines.reembed --regions`
    # builds a new one with them.
    regions: bool = False
    # The default per request when none is given: auto = regions where the collection has
    # region vectors, else global. Asking regions of a collection without them is a 409.
    mode: Literal["auto", "global", "regions"] = "auto"
    # The query's 2x2/3x3 cells: cut and embedded one by one (13 passes; measured best on
    # collages) or pooled from one extra 448 px pass over the query (1 pass; docs: q1).
    query_cells: Literal["cut", "pooled"] = "cut"


class Settings(_Section):
    environment: Literal["development", "production"] = "development"
    model: ModelSettings = Field(default_factory=ModelSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    stores: StoreSettings = Field(default_factory=StoreSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    duplicates: DuplicateSettings = Field(default_factory=DuplicateSettings)
    search: SearchSettings = Field(default_factory=SearchSettings)

    @property
    def keys_required(self) -> bool:
        """Whether routes need an API key: security.require_keys, or its default."""
        if self.security.require_keys is not None:
            return self.security.require_keys
        return self.environment == "production" or self.server.host not in _LOOPBACK_HOSTS

    @model_validator(mode="after")
    def _no_default_secrets_in_production(self) -> Settings:
        if self.environment == "production" and self.security.require_keys is False:
            raise ValueError("production needs API keys: security.require_keys cannot be false")
        if (
            self.environment == "production"
            and self.stores.objects_uri.startswith("s3://")
            and self.stores.s3_secret_key in _DEFAULT_SECRETS
        ):
            raise ValueError(
                "production refuses the default S3 secret: set ISE__STORES__S3_SECRET_KEY"
            )
        if self.environment == "production" and ":changeme@" in self.stores.metadata_uri:
            raise ValueError("production refuses the default database password")
        token = self.server.admin_token
        if self.environment == "production" and token and token in _DEFAULT_SECRETS:
            # Optional (production requires keys, and an admin key can delete all), but a
            # well-known value would let anyone wipe the index.
            raise ValueError(
                "production refuses a default ISE__SERVER__ADMIN_TOKEN: unset it or set a secret"
            )
        return self

    def resolved(self, base: Path | None = None) -> Settings:
        """Relative local paths become absolute, so Ray workers in other directories agree."""
        root = (base or Path.cwd()).resolve()

        def fix_path(p: str) -> str:
            return str((root / p).resolve()) if not Path(p).is_absolute() else p

        out = self.model_copy(deep=True)
        out.model.cache_dir = fix_path(out.model.cache_dir)
        if out.model.weights and "://" not in out.model.weights:
            out.model.weights = fix_path(out.model.weights)
        st = out.stores
        if st.metadata_uri.startswith("sqlite:///") and not st.metadata_uri.startswith(
            "sqlite:////"
        ):
            rel = st.metadata_uri.removeprefix("sqlite:///")
            if rel and rel != ":memory:":
                st.metadata_uri = "sqlite:///" + fix_path(rel)
        if st.objects_uri.startswith("file://"):
            st.objects_uri = "file://" + fix_path(st.objects_uri.removeprefix("file://"))
        if "://" not in st.vectors_uri:
            st.vectors_uri = fix_path(st.vectors_uri)
        return out


def _coerce(raw: str) -> Any:
    """Env values are YAML scalars/flows, so `true`, `3`, `{M: 8}` arrive typed."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _apply_env(data: dict[str, Any], environ: dict[str, str]) -> dict[str, Any]:
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in key[len(ENV_PREFIX) :].split("__") if p]
        if not path:
            continue
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{key}: {part} is not a section")
            node = child
        node[path[-1]] = _coerce(raw)
    return data


def load_settings(
    path: str | Path | None = None,
    environ: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Read YAML (ISE_CONFIG or ./config.yaml; missing file = defaults), apply env, validate."""
    env = dict(os.environ if environ is None else environ)
    cfg_path = Path(path or env.get("ISE_CONFIG") or DEFAULT_CONFIG)
    data: dict[str, Any] = {}
    if cfg_path.exists():
        loaded = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{cfg_path}: top level must be a mapping")
        data = loaded
    elif path is not None:
        raise ConfigError(f"config file not found: {cfg_path}")
    data = _apply_env(data, env)
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid settings in {cfg_path}: {exc}") from exc
    return settings.resolved(cfg_path.parent if cfg_path.exists() else None)


def settings_to_json(settings: Settings) -> str:
    """Settings travel to Ray replicas and jobs as JSON, already resolved."""
    return json.dumps(settings.model_dump(mode="json"))


def settings_from_json(raw: str) -> Settings:
    return Settings.model_validate(json.loads(raw))
