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
    ],
)
def test_bad_values_are_clear_errors(env: dict[str, str]) -> None:
    with pytest.raises(InvalidInput):
        Settings.from_env(env)


def test_every_setting_has_help() -> None:
    helps = Settings.help()
    assert set(helps) == {f.name for f in fields(Settings)}
    assert all(len(h) > 10 for h in helps.values())
