"""`logship top`'s pure parts: rates from successive documents, sorting, the frame."""

from __future__ import annotations

from rich.console import Console

from logship.top import Fleet, Rates, Screen, Sort, render


def doc(name: str, updated: str, records: int, lag: int = 0, kafka: str = "ok",
        **extra) -> dict:
    return {"name": name, "host": "h", "version": "0.1.0", "updated": updated, "kafka": kafka,
            "files_total": 1, "files": [{"path": f"/var/log/{name}.log", "topic": "t",
                                         "state": "following", "lag_bytes": lag,
                                         "records_sent": records, "last_error": None}], **extra}


def shown(screen: Screen, width: int = 80, height: int | None = None, live: bool = False) -> str:
    console = Console(width=width, force_terminal=False)
    with console.capture() as capture:
        console.print(render(screen.frame(None, live), width, height))
    return capture.get()


def test_a_rate_is_the_growth_of_the_count_over_the_time_between_documents():
    rates = Rates()
    assert rates.update(("a", "p", "t"), 100.0, 50) is None
    assert rates.update(("a", "p", "t"), 102.0, 250) == 100.0
    assert rates.update(("a", "p", "t"), 102.0, 250) == 100.0, "the same document again"
    assert rates.update(("a", "p", "t"), 103.0, 10) is None, "a restarted worker starts over"


def test_rows_sort_worst_lag_first_then_by_rate_then_by_name():
    screen = Screen(Fleet(), stale_after=1e12, show_files=False)
    screen.read([doc("b", "2026-01-01T00:00:00.000+00:00", 0, lag=10),
                 doc("a", "2026-01-01T00:00:00.000+00:00", 0, lag=5000)], 1.0)
    screen.read([doc("b", "2026-01-01T00:00:01.000+00:00", 900, lag=10),
                 doc("a", "2026-01-01T00:00:01.000+00:00", 100, lag=5000)], 2.0)
    order = [line.split()[0] for line in shown(screen).splitlines()[2:]]
    assert order == ["a", "b"]
    screen.press("s")
    assert screen.sort is Sort.RATE
    order = [line.split()[0] for line in shown(screen).splitlines()[2:]]
    assert order == ["b", "a"]
    screen.press("s")
    order = [line.split()[0] for line in shown(screen).splitlines()[2:]]
    assert order == ["a", "b"] and screen.sort is Sort.NAME


def test_a_held_agent_shows_its_cause_and_an_old_document_is_stale():
    screen = Screen(Fleet(), stale_after=15, show_files=True)
    screen.read([doc("a", "2020-01-01T00:00:00.000+00:00", 0, kafka="unavailable",
                     kafka_cause="127.0.0.1:9092: connection refused")], 1.0)
    text = shown(screen, width=120)
    assert "stale" in text
    screen.stale_after = 1e12
    text = shown(screen, width=200)
    assert "held: 127.0.0.1:9092: connection refused" in text
    assert "/var/log/a.log" in text


def test_a_long_path_is_cut_on_the_left_and_rows_beyond_the_screen_are_counted():
    long = doc("a", "2026-01-01T00:00:00.000+00:00", 0)
    long["files"] = [{**long["files"][0], "path": f"/very/long/directory/{i}/name-{i}.log"}
                     for i in range(30)]
    screen = Screen(Fleet(), stale_after=1e12, show_files=True)
    screen.read([long], 1.0)
    text = shown(screen, height=12, live=True)
    assert "…" in text and "name-0.log" in text
    assert len(text.splitlines()) == 12
    assert "... 22 more rows" in text


def test_a_terminal_too_small_is_said_instead_of_drawn():
    screen = Screen(Fleet(), stale_after=15, show_files=False)
    assert shown(screen, width=60, height=20, live=True).startswith(
        "terminal too small: 60x20; logship top needs at least 80x10")
