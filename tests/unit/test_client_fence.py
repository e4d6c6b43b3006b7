"""The client fence of a node being restored: only the superuser logs in over TCP."""

from __future__ import annotations

from controlplane.orchestrator import docker_layout
from controlplane.orchestrator.hba import SUPERUSER, client_hba
from controlplane.orchestrator.local import _HBA as LOCAL_HBA


def _rules(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line and not line.startswith("#")]


def test_unfenced_rules_are_the_normal_ones() -> None:
    for normal in (LOCAL_HBA, docker_layout.HBA):
        assert client_hba(normal, fenced=False) == normal


def test_fenced_host_rules_admit_only_the_superuser() -> None:
    for normal in (LOCAL_HBA, docker_layout.HBA):
        fenced = _rules(client_hba(normal, fenced=True))
        host = [r for r in fenced if r[0] == "host"]
        assert host and all(r[2] == SUPERUSER for r in host)
        # Same rules otherwise: addresses and methods unchanged, local socket rules kept.
        normal_rules = _rules(normal)
        assert [r[:2] + r[3:] for r in fenced] == [r[:2] + r[3:] for r in normal_rules]
        assert [r for r in fenced if r[0] == "local"] == [
            r for r in normal_rules if r[0] == "local"
        ]


def test_fencing_twice_changes_nothing_more() -> None:
    once = client_hba(docker_layout.HBA, fenced=True)
    assert _rules(client_hba(once, fenced=True)) == _rules(once)
