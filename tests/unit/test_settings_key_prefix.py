"""``HEARTH_KEY_PREFIX`` keeps deployments apart only if it is a plain string: no glob characters (the broker
subscribes with a pattern built from it), no spaces, not empty."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from settings import Settings


@pytest.mark.parametrize("prefix", ["", "dep*", "dep?", "dep[a]", "a b", "back\\slash"])
def test_a_key_prefix_that_could_match_another_deployment_is_refused(prefix: str) -> None:
    with pytest.raises(ValidationError, match="HEARTH_KEY_PREFIX must be non-empty"):
        Settings(key_prefix=prefix)


@pytest.mark.parametrize("prefix", ["hearth", "team:hearth", "dep-a", "prod_2.eu"])
def test_plain_prefixes_are_kept(prefix: str) -> None:
    assert Settings(key_prefix=prefix).key_prefix == prefix
