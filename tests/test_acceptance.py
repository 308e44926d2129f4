"""Acceptance statistics in isolation: bounded memory, cumulative partial lengths, rows and percentiles."""

from __future__ import annotations

from lsp_server.acceptance import MAX_LATENCIES, Acceptance, percentile


def test_shown_ids_are_bounded_and_forgotten_ones_ignored():
    acc = Acceptance(max_shown=3)
    ids = [acc.shown("python", "m", 10, 5.0) for _ in range(5)]
    assert acc.accepted(ids[0]) is False and acc.partially_accepted(ids[1], 2) is False  # forgotten
    assert acc.accepted(ids[4]) is True
    (row,) = acc.status()
    assert (row["shown"], row["accepted"], row["partlyAccepted"], row["acceptedChars"]) == (5, 1, 0, 10)
    assert len(acc._items) == 3


def test_partial_lengths_are_cumulative_and_capped_at_the_suggestion():
    acc = Acceptance()
    i = acc.shown("go", "m", 6, 1.0)
    acc.partially_accepted(i, 4)
    acc.partially_accepted(i, 2)  # a smaller total adds nothing
    acc.partially_accepted(i, 60)  # capped at the suggestion's 6 characters
    (row,) = acc.status()
    assert (row["partlyAccepted"], row["acceptedChars"], row["accepted"]) == (1, 6, 0)
    assert row["acceptanceRate"] == 0.0 and row["acceptedLatencyMs"] == {}


def test_rows_per_language_and_model_and_latency_percentiles():
    acc = Acceptance()
    for ms in range(1, 101):
        acc.accepted(acc.shown("python", "a", 1, float(ms)))
    acc.shown("python", "b", 1, 1.0)
    rows = {(r["language"], r["model"]): r for r in acc.status()}
    assert set(rows) == {("python", "a"), ("python", "b")}
    assert rows["python", "a"]["acceptedLatencyMs"] == {"p50": 50.0, "p90": 90.0, "p99": 99.0}
    assert rows["python", "b"]["shown"] == 1 and rows["python", "b"]["accepted"] == 0
    assert percentile([7.0], 50) == 7.0
    assert MAX_LATENCIES >= 100


def test_last_shown_per_document():
    acc = Acceptance(max_shown=2)
    a = acc.shown("python", "m", 3, 1.0, "file:///a.py")
    assert acc.last_shown("file:///a.py") == a and acc.last_shown("file:///b.py") is None
    acc.shown("python", "m", 3, 1.0, "file:///b.py")
    acc.shown("python", "m", 3, 1.0, "file:///c.py")
    assert acc.last_shown("file:///a.py") is None  # its item is forgotten
