"""Fault-injection knobs that BREAK SAFETY on purpose, for the chaos tests only.

Each is off unless its environment variable is exactly "1", and a node that has one on
says so loudly in its log. They exist so that tests can prove the chaos checkers catch
the bugs they are meant to catch (tests/test_chaos_runs.py); never set them otherwise.

- SIXFOLD_UNSAFE_ACK_BEFORE_QUORUM=1: the quorum client reports a commit durable as soon
  as it is issued, before 4 of 6 copies hold it.
- SIXFOLD_UNSAFE_IGNORE_FENCING=1: a writer that storage fenced (a newer writer took over:
  storage answers STALE_EPOCH) takes no notice and keeps acknowledging commits that storage
  refused; told by the coordinators that a newer writer exists, it does not step down either.
  Before it is fenced it behaves exactly as a correct writer; storage still refuses its reads
  at the old epoch (that check is storage's, not the writer's).
"""

from __future__ import annotations

import os

ACK_BEFORE_QUORUM = os.environ.get("SIXFOLD_UNSAFE_ACK_BEFORE_QUORUM") == "1"
IGNORE_FENCING = os.environ.get("SIXFOLD_UNSAFE_IGNORE_FENCING") == "1"


def enabled() -> list[str]:
    return [name for name, on in (("SIXFOLD_UNSAFE_ACK_BEFORE_QUORUM", ACK_BEFORE_QUORUM),
                                  ("SIXFOLD_UNSAFE_IGNORE_FENCING", IGNORE_FENCING)) if on]
