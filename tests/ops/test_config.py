"""service.config: one declaration per setting, read alone or all together, and a database
URL whose driver is not installed refused at start naming the extra that installs it."""

import importlib.util
import sys

import pytest

from service.config import ConfigError, Settings, read


def test_one_setting_is_read_alone_with_its_declared_default():
    assert read("workers", {}) == Settings().workers == 2
    assert read("workers", {"KCDS_WORKERS": "3"}) == 3
    assert read("fixtures_dir", {}) is None
    with pytest.raises(ConfigError, match=r"KCDS_WORKERS must be a whole number, not '2\.5'"):
        read("workers", {"KCDS_WORKERS": "2.5"})
    with pytest.raises(ConfigError, match="KCDS_THREADS must be ≥ 1, not 0"):
        read("threads", {"KCDS_THREADS": "0"})
    with pytest.raises(ConfigError, match="KCDS_RETENTION_DAYS must be 1–36,500, not 0"):
        read("retention_days", {"KCDS_RETENTION_DAYS": "0"})


def test_switches_and_the_three_state_preview():
    assert Settings.from_env({"KCDS_REGISTRY": "off"}).registry is False
    assert Settings.from_env({"KCDS_STORE_COMMENTS": "true"}).store_comments is True
    assert read("preview", {}) is None
    assert read("preview", {"KCDS_PREVIEW": "ON"}) is True
    with pytest.raises(ConfigError, match="KCDS_REGISTRY must be one of on, off"):
        read("registry", {"KCDS_REGISTRY": "yes"})


@pytest.fixture
def without(monkeypatch):
    """Make the named modules look uninstalled to service.config."""
    missing: set[str] = set()
    real = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name in missing else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    return missing.add


def test_a_database_driver_that_is_not_installed_names_its_extra(without):
    without("psycopg")
    without("redis")
    pg = "postgresql://kcds@db.example.org/kcds"
    with pytest.raises(ConfigError, match=r"KCDS_DATABASE_URL: .*ketamine-cds\[postgres\]"):
        Settings.from_env({"KCDS_DATABASE_URL": pg})
    with pytest.raises(ConfigError, match=r"KCDS_REPLAY_CACHE: .*ketamine-cds\[redis\]"):
        Settings.from_env({"KCDS_REPLAY_CACHE": "redis://cache:6379/0"})
    with pytest.raises(ConfigError, match=r"KCDS_REPLAY_CACHE: .*ketamine-cds\[postgres\]"):
        Settings.from_env({"KCDS_REGISTRY": "off", "KCDS_REPLAY_CACHE": pg})
    # neither is needed for SQLite and the in-process replay cache
    assert Settings.from_env({"KCDS_REGISTRY": "off"}).replay_cache == "memory"
    assert Settings.from_env({}).replay_cache == "sqlite:///./ketamine-cds.db"
    # another driver named in the URL is the site's business
    assert Settings.from_env({"KCDS_DATABASE_URL": "postgresql+pg8000://db/kcds"})


def test_the_redis_replay_cache_names_its_extra_when_the_client_is_missing(monkeypatch):
    from cds_hooks.replay import open_replay_cache

    monkeypatch.setitem(sys.modules, "redis", None)  # import redis now fails
    with pytest.raises(ImportError, match=r"ketamine-cds\[redis\]"):
        open_replay_cache("redis://127.0.0.1:6379/0")
