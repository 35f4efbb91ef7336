"""The model switch's settings round trip (the switch itself runs on a live cluster)."""

from __future__ import annotations

from pathlib import Path

from image_search.config import load_settings
from pipelines.switch import settings_overrides
from tests.unit.pipelines.helpers import settings_in


def test_settings_overrides_rebuild_the_same_settings(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    again = load_settings(environ={}, overrides=settings_overrides(settings))
    assert again == settings
