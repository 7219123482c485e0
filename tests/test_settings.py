from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from search.errors import InvalidInput
from search.settings import Settings


def test_defaults_env_then_overrides() -> None:
    env = {"NEWSDESK_CANDIDATES": "50", "NEWSDESK_TITLE_CONTEXT": "false", "NEWSDESK_INDEX_DIR": "/tmp/x"}
    s = Settings.from_env(env, candidates=75)
    assert s.candidates == 75  # a flag beats the environment
    assert s.title_context is False
    assert s.index_dir == Path("/tmp/x")
    assert Settings.from_env({}).candidates == Settings().candidates


@pytest.mark.parametrize(
    "env",
    [
        {"NEWSDESK_CANDIDATES": "many"},
        {"NEWSDESK_TITLE_CONTEXT": "perhaps"},
        {"NEWSDESK_THREADS": "0"},
        {"NEWSDESK_DUPLICATE_THRESHOLD": "1.5"},
        {"NEWSDESK_HEADER_TIMEOUT": "0"},
        {"NEWSDESK_BODY_TIMEOUT": "-1"},
        {"NEWSDESK_IDLE_TIMEOUT": "nan"},
        {"NEWSDESK_MAX_CONNECTIONS": "0"},
    ],
)
def test_bad_values_are_clear_errors(env: dict[str, str]) -> None:
    with pytest.raises(InvalidInput):
        Settings.from_env(env)


def test_every_setting_has_help() -> None:
    helps = Settings.help()
    assert set(helps) == {f.name for f in fields(Settings)}
    assert all(len(h) > 10 for h in helps.values())


def test_every_setting_is_documented_in_the_readme() -> None:
    """The README's settings table has a row for each setting, with its variable and its default."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip(" `"): line for line in readme.splitlines() if line.startswith("| `NEWSDESK_")}
    for f in fields(Settings):
        row = rows.get(f"NEWSDESK_{f.name.upper()}")
        assert row is not None, f"README.md has no row for NEWSDESK_{f.name.upper()}"
        default = str(f.default).lower() if isinstance(f.default, bool) else str(f.default)
        assert f"`{default}`" in row or (default == "" and "(empty)" in row), (f.name, row)
