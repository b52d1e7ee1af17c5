"""`logship top`'s pure parts: rows from documents, staleness, sorting, the frame."""

from __future__ import annotations

from rich.console import Console

from logship.status import rfc3339
from logship.top import Screen, Sort, _age, agent_row, render

NOW = 1_800_000_000.0


def stamp(seconds_ago: float) -> str:
    return rfc3339(NOW - seconds_ago)


def doc(name: str, ago: float = 1.0, rate: float = 0.0, lag: int = 0, kafka: str = "ok",
        **extra) -> dict:
    return {"name": name, "host": "h", "version": "0.1.0", "updated": stamp(ago),
            "kafka": kafka, "interval": 5.0, "progress_interval": 60.0, "files_total": 1,
            "lag_bytes": lag, "records_per_second": rate,
            "files": [{"path": f"/var/log/{name}.log", "topic": "t", "state": "shipping",
                       "lag_bytes": lag, "records_per_second": rate, "last_error": None}],
            **extra}


def screen_of(*documents: dict, show_files: bool = False) -> Screen:
    screen = Screen(stale_after=15, show_files=show_files)
    screen.rows = [agent_row(d) for d in documents]
    return screen


def shown(screen: Screen, width: int = 80, height: int | None = None, live: bool = False) -> str:
    console = Console(width=width, force_terminal=False)
    frame = screen.frame(None, live)
    frame.now = NOW
    with console.capture() as capture:
        console.print(render(frame, width, height))
    return capture.get()


def agents_in_order(text: str) -> list[str]:
    return [line.split()[0] for line in text.splitlines()[3:]]


def test_rows_sort_worst_lag_first_then_by_rate_then_by_name():
    screen = screen_of(doc("b", rate=900, lag=10), doc("a", rate=100, lag=5000))
    assert agents_in_order(shown(screen)) == ["a", "b"]
    screen.press("s")
    assert screen.sort is Sort.RATE
    assert agents_in_order(shown(screen)) == ["b", "a"]
    screen.press("s")
    assert agents_in_order(shown(screen)) == ["a", "b"] and screen.sort is Sort.NAME


def test_lines_s_is_the_agents_own_rate_and_the_screen_says_how_it_is_computed():
    text = shown(screen_of(doc("a", rate=1234.0), doc("b", rate=16000.0)))
    assert text.startswith("logship top: 2 agents, 2 files, 17.2k lines/s")
    assert "lines/s: each agent's own count between its last two documents" in text
    assert "1234" in text and "16.0k" in text


def test_a_document_whose_lines_move_is_stale_once_overdue_one_at_rest_never():
    due_within = 60 + 2 * 5
    screen = screen_of(doc("moving", ago=due_within + 1, rate=50.0),
                       doc("idle", ago=86400 * 3, rate=0.0),
                       doc("fresh", ago=due_within - 1, rate=50.0))
    rows = {line.split()[0]: line for line in shown(screen, width=120).splitlines()[3:]}
    assert "stale" in rows["moving"] and " - " in rows["moving"], "no rate claimed"
    assert "stale" not in rows["idle"] and rows["idle"].rstrip().endswith("3d")
    assert "stale" not in rows["fresh"] and "50" in rows["fresh"]


def test_a_document_of_an_older_agent_is_stale_after_the_ttl():
    old = {key: value for key, value in doc("old", ago=20).items()
           if key not in ("interval", "progress_interval", "records_per_second")}
    assert "stale" in shown(screen_of(old))


def test_a_held_agent_shows_its_cause_and_its_files():
    screen = screen_of(doc("a", kafka="unavailable",
                           kafka_cause="127.0.0.1:9092: connection refused"), show_files=True)
    text = shown(screen, width=200)
    assert "held: 127.0.0.1:9092: connection refused" in text
    assert "/var/log/a.log" in text


def test_a_long_path_is_cut_on_the_left_and_rows_beyond_the_screen_are_counted():
    long = doc("a")
    long["files"] = [{**long["files"][0], "path": f"/very/long/directory/{i}/name-{i}.log"}
                     for i in range(30)]
    text = shown(screen_of(long, show_files=True), height=12, live=True)
    assert "…" in text and "name-0.log" in text
    assert len(text.splitlines()) == 12
    assert "... 23 more rows" in text


def test_a_whole_fleet_printed_to_a_pipe_keeps_its_columns_across_tables():
    text = shown(screen_of(*[doc(f"agent-{i:04d}", lag=i) for i in range(1200)]))
    lines = text.splitlines()
    assert len(lines) == 3 + 1200 and lines[2].startswith("AGENT / FILE")
    assert sum(line.startswith("AGENT / FILE") for line in lines) == 1
    assert {line.index(" h ") for line in lines[3:]} == {lines[3].index(" h ")}


def test_ages_fit_their_column():
    assert [_age(s) for s in (5, 99, 100, 5999, 6000, 48 * 3600, 400 * 86400)] == \
        ["5s", "99s", "2m", "100m", "2h", "2d", "400d"]


def test_a_terminal_too_small_is_said_instead_of_drawn():
    screen = Screen(stale_after=15, show_files=False)
    assert shown(screen, width=60, height=20, live=True).startswith(
        "terminal too small: 60x20; logship top needs at least 80x10")
