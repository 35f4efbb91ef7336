"""Settings: YAML + env overrides, validation, path resolution, production guards."""

from __future__ import annotations

from pathlib import Path

import pytest

from image_search.config import load_settings, settings_from_json, settings_to_json
from image_search.errors import ConfigError
from tests.conftest import ROOT


def test_repo_config_loads_with_embedded_defaults() -> None:
    s = load_settings(ROOT / "config.yaml", environ={})
    assert s.model.name == "efficientnet-lite0"
    assert s.stores.metadata_uri.startswith("sqlite:////")  # made absolute
    assert s.stores.objects_uri.startswith("file:///")
    assert Path(s.stores.vectors_uri).is_absolute()
    assert s.stores.consistency_level == "Strong"
    assert s.stores.search_consistency_level == "Session"


def test_search_consistency_must_read_own_writes(tmp_path: Path) -> None:
    env = {"ISE__STORES__SEARCH_CONSISTENCY_LEVEL": "Bounded"}
    with pytest.raises(ConfigError, match="Strong or Session"):
        load_settings(ROOT / "config.yaml", environ=env)


def test_env_overrides_are_typed(tmp_path: Path) -> None:
    env = {
        "ISE__LIMITS__MAX_UPLOAD_BYTES": "4096",
        "ISE__STORES__INDEX_PARAMS": "{M: 8, efConstruction: 64}",
        "ISE__STORES__S3_SECURE": "true",
        "ISE__MODEL__NAME": "resnet50",
    }
    s = load_settings(ROOT / "config.yaml", environ=env)
    assert s.limits.max_upload_bytes == 4096
    assert s.stores.index_params == {"M": 8, "efConstruction": 64}
    assert s.stores.s3_secure is True
    assert s.model.name == "resnet50"


def test_unknown_key_fails_fast(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("stores:\n  metadata_url: sqlite://\n")
    with pytest.raises(ConfigError, match="metadata_url"):
        load_settings(cfg, environ={})


def test_bounded_consistency_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="read-after-write"):
        load_settings(ROOT / "config.yaml", environ={"ISE__STORES__CONSISTENCY_LEVEL": "Bounded"})


def test_unknown_model_is_refused() -> None:
    with pytest.raises(ConfigError):
        load_settings(ROOT / "config.yaml", environ={"ISE__MODEL__NAME": "vgg"})


def test_production_refuses_default_secrets() -> None:
    env = {
        "ISE__ENVIRONMENT": "production",
        "ISE__STORES__OBJECTS_URI": "s3://images",
        "ISE__STORES__S3_SECRET_KEY": "minioadmin",
    }
    with pytest.raises(ConfigError, match="S3 secret"):
        load_settings(ROOT / "config.yaml", environ=env)
    env["ISE__STORES__S3_SECRET_KEY"] = "a-real-secret-value"
    # No admin token is fine (admin keys delete all); a well-known one is not.
    assert load_settings(ROOT / "config.yaml", environ=env).keys_required
    env["ISE__SERVER__ADMIN_TOKEN"] = "changeme"
    with pytest.raises(ConfigError, match="ADMIN_TOKEN"):
        load_settings(ROOT / "config.yaml", environ=env)
    env["ISE__SERVER__ADMIN_TOKEN"] = "a-long-random-token"
    assert load_settings(ROOT / "config.yaml", environ=env).environment == "production"


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml", environ={})


def test_overrides_and_json_round_trip() -> None:
    s = load_settings(ROOT / "config.yaml", environ={}, overrides={"server.port": 9999})
    assert s.server.port == 9999
    assert settings_from_json(settings_to_json(s)) == s


def test_relative_weights_path_is_resolved(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  name: resnet50\n  weights: w/resnet.pth\n")
    s = load_settings(cfg, environ={})
    assert s.model.weights == str(tmp_path / "w" / "resnet.pth")


def test_model_names_in_settings_are_the_registrys() -> None:
    # Settings keep a Literal for typo-proof configs; the registry is where models are defined.
    from typing import get_args

    from image_search.config import ModelSettings
    from image_search.embedding import MODELS

    assert set(get_args(ModelSettings.model_fields["name"].annotation)) == set(MODELS)
