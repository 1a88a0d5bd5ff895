"""The games registry: the default 30, or a studio's own TOML file; a faulty file is refused
with what is wrong and where, before anything is built on it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gaming_pipeline.games import DEFAULT_GAMES, GAMES, GAMES_FILE_VARIABLE, load_games


def registry_in_a_fresh_process(games_file: str | None) -> list[str]:
    """The keywords a process's code loads with, GAMING_PIPELINE_GAMES set or not."""
    environ = {k: v for k, v in os.environ.items() if k != GAMES_FILE_VARIABLE}
    if games_file is not None:
        environ[GAMES_FILE_VARIABLE] = games_file
    shown = subprocess.run(
        [sys.executable, "-c", "from gaming_pipeline.games import GAMES; print(*(g.keyword for g in GAMES))"],
        env=environ,
        capture_output=True,
        text=True,
        check=True,
    )
    return shown.stdout.split()


def test_with_nothing_set_the_registry_is_the_default_thirty_games():
    assert len(DEFAULT_GAMES) == 30
    assert registry_in_a_fresh_process(None) == [game.keyword for game in DEFAULT_GAMES]
    assert registry_in_a_fresh_process("") == [game.keyword for game in DEFAULT_GAMES]


def test_a_studio_lists_its_own_games_and_the_code_loads_with_them(tmp_path):
    games_file = tmp_path / "games.toml"
    games_file.write_text(
        '[[game]]\nkeyword = "kart_kings"\napp_name = "Kart Kings"\npopularity = 2.5\n\n'
        '[[game]]\nkeyword = "word_wizard"\napp_name = "Word Wizard"\n'
    )
    kart, wizard = load_games(games_file)
    assert (kart.keyword, kart.app_name, kart.popularity, kart.table_name) == (
        "kart_kings",
        "Kart Kings",
        2.5,
        "game_kart_kings_events",
    )
    assert wizard.popularity == 1.0
    assert registry_in_a_fresh_process(str(games_file)) == ["kart_kings", "word_wizard"]


def test_the_tests_run_with_their_own_small_registry():
    assert [game.keyword for game in GAMES] == [
        game.keyword for game in load_games(os.environ[GAMES_FILE_VARIABLE])
    ]
    assert len(GAMES) < len(DEFAULT_GAMES)


@pytest.mark.parametrize(
    "content, fault",
    [
        (None, "No such file"),
        ("[[game]\nkeyword =", "Expected"),
        ("", "lists no games"),
        ('game = "kart_kings"', "lists no games"),
        ('[[game]]\nkeyword = "kart_kings"\n', "needs `keyword` and `app_name`"),
        ('[[game]]\nkeyword = "kart_kings"\napp_name = "K"\ngenre = "racing"\n', "needs `keyword`"),
        ('[[game]]\nkeyword = "Kart Kings!"\napp_name = "K"\n', "must be lower-case"),
        ('[[game]]\nkeyword = "all_games"\napp_name = "K"\n', "all-games rows"),
        ('[[game]]\nkeyword = "kart_kings"\napp_name = "K"\npopularity = "high"\n', "could not convert"),
        (
            '[[game]]\nkeyword = "kart_kings"\napp_name = "K"\n\n[[game]]\nkeyword = "kart_kings"\napp_name = "L"\n',
            "lists kart_kings more than once",
        ),
    ],
)
def test_a_faulty_games_file_is_refused_naming_the_file_and_the_fault(tmp_path, content, fault):
    games_file = tmp_path / "games.toml"
    if content is not None:
        games_file.write_text(content)
    with pytest.raises(ValueError, match=f"{GAMES_FILE_VARIABLE}={games_file}: .*{fault}"):
        load_games(games_file)
