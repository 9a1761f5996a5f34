"""bench/lag_bench.py's matching of acknowledged commits to the polls that first saw them."""

from __future__ import annotations

import pytest

from bench.lag_bench import e2e_lags_ms

pytestmark = pytest.mark.timeout(10)


def test_a_commit_is_timed_to_the_first_poll_after_its_acknowledgement_that_saw_its_id():
    seen = [(1.00, 3), (1.01, 5), (1.02, 5), (1.03, 9)]
    commits = [(0.9, 0.995, 4),    # polled at 1.00 (id 3): not yet; 1.01 saw it
               (0.9, 1.015, 2),    # id 2 was visible before it was acknowledged: the next poll after
               (0.9, 1.025, 9),
               (0.9, 1.031, 10)]   # never seen
    lags_ms, unseen = e2e_lags_ms(commits, seen)
    assert lags_ms == pytest.approx([15.0, 5.0, 5.0])
    assert unseen == 1


def test_no_polls_means_every_commit_is_unseen():
    assert e2e_lags_ms([(0.0, 1.0, 1)], []) == ([], 1)
