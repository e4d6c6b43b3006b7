"""Task ids as typed: whole ids, unique prefixes of at least six hex digits, clear refusals."""

from __future__ import annotations

import pytest

from controlplane.cli.errors import CliError
from controlplane.cli.task_ids import is_full_id, match_prefix

IDS = [
    "019a3c5e-8f1b-7a00-8000-000000000001",
    "019a3c5e-8f1b-7a00-8000-000000000002",
    "019a3c5f-0000-7a00-8000-00000000000a",
]


def test_a_unique_prefix_resolves_with_or_without_dashes() -> None:
    """The one id that starts with the prefix is the answer; dashes may be left out."""
    assert match_prefix("019a3c5f", "db1", IDS) == IDS[2]
    assert match_prefix(IDS[0].replace("-", "")[:32], "db1", IDS) == IDS[0]
    assert match_prefix("019a3c5e-8f1b-7a00-8000-000000000002", "db1", IDS) == IDS[1]
    assert match_prefix("019A3C5F", "db1", IDS) == IDS[2]


def test_ambiguous_short_and_unknown_prefixes_are_refused() -> None:
    """Several matches: a usage error listing them; under six digits or not hex: a usage error;
    no match: not found."""
    with pytest.raises(CliError) as ambiguous:
        match_prefix("019a3c", "db1", IDS)
    assert ambiguous.value.name == "ambiguous_task_id"
    assert ambiguous.value.exit_code == 2
    assert ambiguous.value.details["matches"] == IDS
    assert "3 tasks of db1 match" in ambiguous.value.message
    for bad in ("019a3", "019a3z5e", "abc"):
        with pytest.raises(CliError) as refused:
            match_prefix(bad, "db1", IDS)
        assert refused.value.name == "invalid_task_id"
        assert refused.value.exit_code == 2
    with pytest.raises(CliError) as absent:
        match_prefix("ffffff", "db1", IDS)
    assert (absent.value.name, absent.value.exit_code) == ("not_found", 1)


def test_whole_ids_are_recognised() -> None:
    assert is_full_id(IDS[0])
    assert not is_full_id(IDS[0][:-1])
