"""pgEdge's container options: how the spec resolves them per node, how they are validated for
each orchestrator, and how the docker layout turns them into mounts, labels and limits."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import msgspec
import pytest

from controlplane.errors import InvalidInputError, PreconditionError
from controlplane.orchestrator import docker_layout as layout
from controlplane.orchestrator.base import ContainerOptions, ExtraMount, InstanceRef
from controlplane.orchestrator.docker_engine import ContainerSpec
from controlplane.orchestrator.docker_orchestrator import DockerOrchestrator
from controlplane.settings import Settings
from controlplane.spec import parse_database_request
from controlplane.spec.models import DatabaseSpec
from controlplane.spec.resources import check_volume_roots, container_options

SHARE = ExtraMount(host_path="/mnt/db-backups", destination_path="/backups")


def body(**spec: Any) -> dict[str, Any]:
    nodes = spec.pop("nodes", [{"name": "n1"}])
    return {"spec": {"database_name": "app", "nodes": nodes, **spec}}


def parse(data: dict[str, Any], orchestrator: str | None = "docker") -> DatabaseSpec:
    return parse_database_request(msgspec.json.encode(data), orchestrator=orchestrator).spec


def refused(data: dict[str, Any], orchestrator: str = "docker") -> dict[str, str]:
    """The validation errors of `data`, by path."""
    with pytest.raises(InvalidInputError) as raised:
        parse(data, orchestrator)
    return {e["path"]: e["message"] for e in raised.value.errors}


def swarm(**fields: Any) -> dict[str, Any]:
    return {"swarm": fields}


def test_node_values_override_the_databases_as_in_pgedge() -> None:
    """A node's cpus (when not 0), memory and whole orchestrator_opts win over the database's;
    a node without them takes the database's."""
    spec = parse(
        body(
            cpus="500m",
            memory="1GiB",
            orchestrator_opts=swarm(extra_labels={"scope": "db"}, image="reg/pg:15"),
            nodes=[
                {
                    "name": "n1",
                    "cpus": "2",
                    "memory": "512M",
                    "orchestrator_opts": swarm(extra_labels={"team": "a", "env": "prod"}),
                },
                {"name": "n2", "cpus": "0"},
            ],
        )
    )
    n1, n2 = (container_options(spec, node) for node in spec.nodes)
    assert n1 == ContainerOptions(
        nano_cpus=2_000_000_000,
        memory_bytes=512_000_000,
        labels=(("env", "prod"), ("team", "a")),
    )
    assert n2 == ContainerOptions(
        image="reg/pg:15",
        nano_cpus=500_000_000,
        memory_bytes=1024**3,
        labels=(("scope", "db"),),
    )
    assert container_options(parse(body()), parse(body()).nodes[0]) == ContainerOptions()


def test_docker_accepts_what_it_applies_and_refuses_networks() -> None:
    """On docker cpus, memory, extra volumes, labels and image validate; extra networks are
    refused (host networking) as are reserved labels, tiny memory and a destination used
    twice; the local orchestrator refuses every one of them."""
    options = swarm(
        extra_volumes=[{"host_path": "/mnt/db-backups", "destination_path": "/backups"}],
        extra_labels={"team": "payments"},
        image="registry.local/pg:15",
    )
    accepted = body(cpus="1.5", memory="2GiB", orchestrator_opts=options)
    assert container_options(parse(accepted), parse(accepted).nodes[0]).volumes == (SHARE,)

    local = refused(accepted, "local")
    assert set(local) == {
        "spec.cpus",
        "spec.memory",
        "spec.orchestrator_opts.swarm.extra_volumes",
        "spec.orchestrator_opts.swarm.extra_labels",
        "spec.orchestrator_opts.swarm.image",
    }
    assert all("plain process" in message for message in local.values())

    volumes = [
        {"host_path": "/mnt/a", "destination_path": "/backups"},
        {"host_path": "/mnt/b", "destination_path": "/backups"},
    ]
    errors = refused(
        body(
            memory="16M",
            orchestrator_opts=swarm(
                extra_networks=[{"id": "traefik-public"}],
                extra_labels={"controlplane.role": "x"},
                extra_volumes=volumes,
            ),
        )
    )
    base = "spec.orchestrator_opts.swarm"
    assert "host's network" in errors[f"{base}.extra_networks[0]"]
    assert "control plane's own" in errors[f"{base}.extra_labels.controlplane.role"]
    assert "another extra volume" in errors[f"{base}.extra_volumes[1].destination_path"]
    assert "below 64MiB" in errors["spec.memory"]
    assert len(errors) == 4


def test_extra_volume_host_paths_stay_inside_the_backup_roots() -> None:
    """A host_path outside the operator's backup roots, or holding or inside the control
    plane's data directory, is refused at its path."""
    roots = [PurePosixPath("/mnt"), PurePosixPath("/var/backups")]
    data_dir = PurePosixPath("/var/lib/controlplane")

    def problems(host_path: str) -> list[str]:
        volume = {"host_path": host_path, "destination_path": "/backups"}
        spec = parse(
            body(nodes=[{"name": "n1", "orchestrator_opts": swarm(extra_volumes=[volume])}])
        )
        return [p["message"] for p in check_volume_roots(spec, roots, data_dir)]

    assert problems("/mnt/db-backups") == []
    assert "backup roots" in problems("/etc")[0]
    assert "data directory" in problems("/var/lib/controlplane/secrets")[0]
    assert "data directory" in problems("/var/lib")[0]


def test_paths_under_an_extra_volume_live_under_its_host_path() -> None:
    """A container path under a volume's destination maps to the volume's host path (the
    deepest volume wins); other paths are the same on both sides."""
    deeper = ExtraMount(host_path="/mnt/fast", destination_path="/backups/fast")
    volumes = [SHARE, deeper]
    assert layout.host_path("/backups/databases/shop/posix/n1/1", volumes) == (
        "/mnt/db-backups/databases/shop/posix/n1/1"
    )
    assert layout.host_path("/backups", volumes) == "/mnt/db-backups"
    assert layout.host_path("/backups/fast/x", volumes) == "/mnt/fast/x"
    assert layout.host_path("/backupsx/y", volumes) == "/backupsx/y"
    assert layout.volume_of("/srv/other", volumes) is None


def test_repositories_on_an_extra_volume_get_no_mount_of_their_own() -> None:
    """The recipe's repository (base_path = the volume's destination) is reached through the
    volume; repositories elsewhere keep their own mount."""
    own = "[global]\nrepo1-path=/backups/databases/shop/posix/n1/1\n"
    source = "[global]\nrepo1-path=/srv/backups/databases/old/posix/n1/1\n"
    mounts = layout.repository_mounts(own, [source])
    kept = layout.outside_volumes(mounts, [SHARE])
    assert [m.target for m in kept] == ["/srv/backups/databases/old"]
    assert layout.extra_mounts([SHARE]) == [
        layout.MountSpec(target="/backups", source="/mnt/db-backups")
    ]


def test_extra_volumes_may_not_hide_the_control_planes_mounts() -> None:
    """A destination at or inside the instance directory, secrets or data volume clashes."""
    own = layout.instance_mounts(
        instance_dir="/cp/instances/shop-n1",
        secrets_dir="/cp/secrets/shop",
        volume="vol",
        repositories=[],
    )
    volumes = [
        ExtraMount(host_path="/mnt/a", destination_path="/cp/instances/shop-n1/pgbackrest"),
        ExtraMount(host_path="/mnt/b", destination_path="/cp/secrets/shop"),
        ExtraMount(host_path="/mnt/c", destination_path="/cp"),
        SHARE,
    ]
    assert layout.clashing_volumes(volumes, own) == [
        "/cp/instances/shop-n1/pgbackrest",
        "/cp/secrets/shop",
    ]


def test_labels_digest_and_engine_arguments() -> None:
    """Our labels win over the spec's; the digest changes with any option and the image and
    is stable otherwise; limits reach the engine only when set."""
    options = ContainerOptions(
        nano_cpus=1_500_000_000, memory_bytes=256 * 1024**2, labels=(("team", "a"),)
    )
    labels = layout.container_labels({"controlplane.node": "n1", "team": "ours"}, options)
    assert labels == {"controlplane.node": "n1", "team": "ours"}
    digest = layout.options_digest("img:15", options)
    assert digest == layout.options_digest(
        "img:15", layout.decode_options(layout.encode_options(options))
    )
    changed = [
        layout.options_digest("img:16", options),
        layout.options_digest("img:15", ContainerOptions()),
        layout.options_digest("img:15", msgspec.structs.replace(options, labels=())),
        layout.options_digest("img:15", msgspec.structs.replace(options, nano_cpus=1)),
        layout.options_digest("img:15", msgspec.structs.replace(options, memory_bytes=1)),
        layout.options_digest("img:15", msgspec.structs.replace(options, volumes=(SHARE,))),
    ]
    assert len({digest, *changed}) == 7
    assert layout.decode_options(None) == ContainerOptions()

    spec = ContainerSpec(image="i", command=["true"], labels={}, mounts=[])
    assert "nano_cpus" not in spec.create_kwargs("c") and "mem_limit" not in spec.create_kwargs("c")
    limited = ContainerSpec(
        image="i", command=["true"], labels={}, mounts=[], nano_cpus=5, mem_limit=7
    )
    assert (limited.create_kwargs("c")["nano_cpus"], limited.create_kwargs("c")["mem_limit"]) == (
        5,
        7,
    )


async def test_options_are_recorded_for_refs_that_do_not_carry_them(tmp_path: Path) -> None:
    """Options handed over once (a workflow with the spec) are used for a ref made without
    the spec (a monitor restart, a restore): extra volumes are mounted, the repository on one
    is made under its host path and gets no mount of its own."""
    settings = Settings(data_dir=tmp_path / "cp")
    orchestrator = DockerOrchestrator(settings, hosts={"local": "tcp://127.0.0.1:9"})
    share = ExtraMount(host_path=str(tmp_path / "share"), destination_path="/backups")
    plain = InstanceRef(
        instance_id="shop-n1", database_id="shop", node_name="n1", host_id="local", port=5501
    )
    given = msgspec.structs.replace(
        plain, container=ContainerOptions(image="reg/pg:15", volumes=(share,))
    )
    config = "[global]\nrepo1-path=/backups/databases/shop/posix/n1/1\n"
    await orchestrator.write_file(given, layout.OWN_PGBACKREST_CONFIG, config)

    recorded = orchestrator._options(plain)
    assert recorded == given.container
    mounts = {m.target: m for m in orchestrator._mounts(plain, with_data=True)}
    assert mounts["/backups"].source == share.host_path
    assert not [t for t in mounts if t.startswith("/backups/")]
    assert (tmp_path / "share" / "databases" / "shop").is_dir()

    # Options handed over again replace the recorded ones (a spec that drops them).
    await orchestrator.write_file(
        msgspec.structs.replace(plain, container=ContainerOptions()), "x", "y"
    )
    assert orchestrator._options(plain) == ContainerOptions()

    instance_dir = settings.data_path / "instances" / "shop-n1"
    hiding = ExtraMount(host_path=str(tmp_path / "h"), destination_path=str(instance_dir))
    clash = msgspec.structs.replace(plain, container=ContainerOptions(volumes=(hiding,)))
    await orchestrator.write_file(clash, "x", "y")
    with pytest.raises(PreconditionError, match="hide the control plane's own mounts"):
        orchestrator._mounts(plain, with_data=True)


def test_swarm_accepts_what_docker_does_and_refuses_networks() -> None:
    """On swarm the same options validate as on docker (they become the service's resource
    limits, labels, image and bind mounts); extra networks are refused for the same reason."""
    options = swarm(
        extra_volumes=[{"host_path": "/mnt/db-backups", "destination_path": "/backups"}],
        extra_labels={"team": "payments"},
        image="registry.local/pg:15",
    )
    accepted = body(cpus="1.5", memory="2GiB", orchestrator_opts=options)
    spec = parse(accepted, "swarm")
    assert container_options(spec, spec.nodes[0]).volumes == (SHARE,)
    networks = swarm(extra_networks=[{"id": "traefik-public"}])
    errors = refused(body(orchestrator_opts=networks), "swarm")
    assert list(errors) == ["spec.orchestrator_opts.swarm.extra_networks[0]"]
    assert "host's network" in errors["spec.orchestrator_opts.swarm.extra_networks[0]"]
