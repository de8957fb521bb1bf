"""Commit notices: listeners are set when a session that noted their topic commits."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from conveyor.db.notices import listening, note


@pytest.fixture
def sessions() -> Iterator[sessionmaker[Session]]:
    engine = create_engine("sqlite://")
    yield sessionmaker(engine)
    engine.dispose()


def test_a_commit_sets_the_listeners_of_the_topics_it_noted(
    sessions: sessionmaker[Session],
) -> None:
    mine, other = threading.Event(), threading.Event()
    with listening("run/1", mine), listening("run/2", other), sessions() as session:
        note(session, "run/1")
        assert not mine.is_set()  # not before the commit
        session.execute(text("SELECT 1"))
        session.commit()
    assert mine.is_set()
    assert not other.is_set()


def test_a_rolled_back_note_is_forgotten(sessions: sessionmaker[Session]) -> None:
    woken = threading.Event()
    with listening("run/1", woken), sessions() as session:
        session.execute(text("SELECT 1"))
        note(session, "run/1")
        session.rollback()
        session.commit()  # a later commit of the same session noted nothing
    assert not woken.is_set()


def test_a_listener_is_not_set_after_its_block(sessions: sessionmaker[Session]) -> None:
    woken = threading.Event()
    kept = threading.Event()
    with listening("run/1", kept):
        with listening("run/1", woken):
            pass
        with sessions() as session:
            note(session, "run/1")
            session.commit()
    assert kept.is_set()
    assert not woken.is_set()
