import pytest

from taxi.storage import CorruptTarget
from taxi.store_registry import Registry, recorded


def test_a_registry_is_its_experiment_and_creation_time_whatever_the_url():
    served = Registry("3", 1_765_000_000_000, "http://127.0.0.1:5000")
    assert served.same_as(Registry("3", 1_765_000_000_000, "https://mlflow.example.org"))
    assert not served.same_as(Registry("3", 1_765_000_000_001, "http://127.0.0.1:5000"))
    assert not served.same_as(Registry("4", 1_765_000_000_000, "http://127.0.0.1:5000"))


def test_a_registry_is_named_by_its_url_experiment_and_creation_time_in_utc():
    assert str(Registry("3", 1_765_000_000_000, "sqlite:///mlflow.db")) == (
        "the registry at sqlite:///mlflow.db (experiment 3 created 2025-12-06 05:46:40 UTC)")


def test_a_record_that_names_no_registry_is_refused_naming_the_file(tmp_path):
    (tmp_path / "registry.json").write_text('{"experiment_id": "3"}')
    with pytest.raises(CorruptTarget, match=rf"^{tmp_path}/registry.json records no registry \(KeyError: 'created'\)"):
        recorded(str(tmp_path))


def test_a_record_is_read_back_as_the_registry_it_names(tmp_path):
    (tmp_path / "registry.json").write_text('{"experiment_id": "3", "created": 7, "tracking_uri": "sqlite:///m.db"}')
    assert recorded(str(tmp_path)) == Registry("3", 7, "sqlite:///m.db")
    assert recorded(str(tmp_path / "empty")) is None
