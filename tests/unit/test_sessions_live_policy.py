"""The pure parts of live session saving: the period under a rate limit, the per-tick cap, and the
citations of a model response (from the official SDK's own types and from their dict)."""

from __future__ import annotations

import pytest

from hearth.errors import HearthError
from hearth.sessions import Citation, citations, save_period
from hearth.sessions.live import SAVE_SHARE, claims_per_tick
from hearth.sessions.saving import SavedState
from tests.helpers import sdk_response


def test_the_period_stays_put_without_a_limit_and_stretches_to_keep_saves_within_their_share() -> None:
    assert save_period(15.0, 1000, 0) == 15.0  # no limit: the configured period
    assert save_period(15.0, 10, 6000) == 15.0  # far under the limit
    stretched = save_period(15.0, 1000, 3000)
    assert stretched == pytest.approx(1000 * 60 / (3000 * SAVE_SHARE))  # 40 s
    assert 1000 * 60 / stretched <= 3000 * SAVE_SHARE  # requests per minute of the saves: within their share
    assert save_period(0.0, 1000, 3000) == 0.0  # off stays off


def test_a_tick_claims_at_most_the_saves_share_of_its_interval_and_never_nothing() -> None:
    assert claims_per_tick(0, 10.0) == -1
    assert claims_per_tick(3000, 10.0) == 250  # 1500/min for saves, 10 s of it
    assert claims_per_tick(1, 10.0) == 1


def test_citations_from_the_sdk_response_and_from_its_dict_are_the_same() -> None:
    response = sdk_response("cntr_a", [("cntr_a", "cfile_1", "primes.csv"), ("cntr_b", "cfile_9", "x.png"),
                                       ("cntr_a", "cfile_1", "primes.csv")])
    want = [Citation("cntr_a", "cfile_1", "primes.csv"), Citation("cntr_b", "cfile_9", "x.png")]
    assert citations(response) == want
    assert citations(response.model_dump(mode="json")) == want
    assert citations(sdk_response("cntr_a", [])) == []
    assert citations(None) == []


def test_something_that_is_no_response_is_a_clear_error() -> None:
    with pytest.raises(HearthError, match="Responses API response"):
        citations("resp_123")


def test_saved_state_round_trips_and_a_new_container_starts_knowing_nothing() -> None:
    state = SavedState(container_id="cntr_a", known={"f1", "f2"}, retry=True)
    back = SavedState.from_json(state.to_json())
    assert back == state
    assert back.of("cntr_a") is back
    assert back.of("cntr_b") == SavedState(container_id="cntr_b")
    assert SavedState.from_json(None) == SavedState()
