"""Versions: which are kept, what a rollback targets."""

import pytest

from lowtide.platform.versions import clean_who, rollback_target, to_prune


def test_versions_pruning_and_rollback_targets() -> None:

    assert to_prune(list(range(1, 13)), keep=10) == [1, 2]
    assert to_prune([1, 2], keep=10) == []
    assert rollback_target([1, 2, 3], current=3, to=None) == 2
    assert rollback_target([1, 2, 3, 4], current=4, to=1) == 1
    with pytest.raises(LookupError, match="not kept"):
        rollback_target([5, 6], current=6, to=1)
    with pytest.raises(LookupError, match="nothing to roll back"):
        rollback_target([1], current=1, to=None)
    with pytest.raises(ValueError, match="current version already"):
        rollback_target([1, 2], current=2, to=2)
    assert clean_who("alice@box\x1b[31m") == "alice@box[31m" and clean_who(None) == "unknown"
