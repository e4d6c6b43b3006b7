"""Parsing CONTROLPLANE_ETCD_HOSTS into the endpoints Patroni is given."""

from __future__ import annotations

import pytest

from controlplane.server.etcd import parse_etcd_hosts


def test_hosts_are_split_trimmed_and_kept_in_order() -> None:
    """Entries are host:port, blanks around commas and empty entries are ignored."""
    assert parse_etcd_hosts(" etcd-1.internal:2379, 10.0.0.2:2379,,[fd00::3]:2379 ") == [
        "etcd-1.internal:2379",
        "10.0.0.2:2379",
        "[fd00::3]:2379",
    ]


@pytest.mark.parametrize(
    "value",
    [
        "nohost",
        "etcd:",
        ":2379",
        "etcd:0",
        "etcd:65536",
        "http://etcd:2379",
        "etcd:2379/x",
        "a b:1",
    ],
)
def test_entries_that_are_not_host_port_are_refused(value: str) -> None:
    """Each malformed entry is refused with the setting's name and the entry itself."""
    with pytest.raises(ValueError, match="CONTROLPLANE_ETCD_HOSTS") as caught:
        parse_etcd_hosts(f"etcd-1:2379,{value}")
    assert repr(value.strip()) in str(caught.value)


@pytest.mark.parametrize("value", ["", " ", ",,"])
def test_an_empty_list_is_refused(value: str) -> None:
    """A value naming no endpoint is an error, not an empty cluster."""
    with pytest.raises(ValueError, match="CONTROLPLANE_ETCD_HOSTS lists no host:port"):
        parse_etcd_hosts(value)
