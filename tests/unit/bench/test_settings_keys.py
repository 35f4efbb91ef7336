"""Every ISE__ variable and dotted override a benchmark sets names a real setting.

The benchmarks do not run in CI (they take minutes and print figures, not verdicts), so a
setting renamed or removed would otherwise only surface when someone runs one.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from image_search.config import Settings
from tests.conftest import ROOT

BENCHES = sorted((ROOT / "bench").glob("*.py"))
ENV_KEY = re.compile(r'"ISE__([A-Z0-9_]+)"')
DOTTED_KEY = re.compile(r'"((?:model|limits|stores|server)\.[a-z0-9_]+)"')


def is_setting(path: list[str]) -> bool:
    node: type[BaseModel] = Settings
    for i, part in enumerate(path):
        field = node.model_fields.get(part)
        if field is None:
            return False
        if i < len(path) - 1:
            sub = field.annotation
            if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
                return False
            node = sub
    return True


@pytest.mark.parametrize("bench", BENCHES, ids=lambda p: p.name)
def test_bench_names_only_real_settings(bench: Path) -> None:
    text = bench.read_text(encoding="utf-8")
    keys = [m.lower().split("__") for m in ENV_KEY.findall(text)]
    keys += [m.split(".") for m in DOTTED_KEY.findall(text)]
    assert [k for k in keys if not is_setting(k)] == []


def test_the_check_rejects_a_removed_setting() -> None:
    assert is_setting(["stores", "metadata_uri"]) and is_setting(["environment"])
    assert not is_setting(["data_dir"]) and not is_setting(["server", "base_url"])
