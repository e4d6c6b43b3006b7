"""CONTROLPLANE_LOCAL_HOSTS: the local orchestrator's named hosts."""

from __future__ import annotations

import pytest

from controlplane.settings import load_settings


def test_unset_means_one_host_named_local() -> None:
    assert load_settings({}).local_host_ids == ["local"]


def test_hosts_in_order_spaces_ignored() -> None:
    settings = load_settings({"CONTROLPLANE_LOCAL_HOSTS": " h1, h2 ,zone-b-3"})
    assert settings.local_host_ids == ["h1", "h2", "zone-b-3"]


@pytest.mark.parametrize("value", ["h1,h1", "H1", "h_1", ",", "-h", "a" * 33, "h1,,h 2"])
def test_bad_lists_are_refused_at_start_naming_the_variable(value: str) -> None:
    with pytest.raises(ValueError, match="CONTROLPLANE_LOCAL_HOSTS"):
        load_settings({"CONTROLPLANE_LOCAL_HOSTS": value})
