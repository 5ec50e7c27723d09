"""The second translation domain: Wesnoth's campaign catalogues read into English -> X sentence pairs."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from hf_metatransfer.data.gettext_catalogues import message_id
from hf_metatransfer.data.wesnoth_parallel import fetch_wesnoth, load_wesnoth_parallel, wesnoth_languages


def write_mo(path: Path, messages: dict[str, str]) -> None:
    """A gettext catalogue (GNU .mo, little-endian, no hash table) holding ``messages`` and an empty header."""
    entries = sorted({"": "Content-Type: text/plain; charset=UTF-8\n", **messages}.items())
    ids, strs = (b"".join(s.encode() + b"\0" for s in column) for column in zip(*entries))
    n, start = len(entries), 28 + 16 * len(entries)
    table_ids, table_strs, offset = [], [], start
    for key, _ in entries:
        table_ids += [len(key.encode()), offset]
        offset += len(key.encode()) + 1
    for _, value in entries:
        table_strs += [len(value.encode()), offset]
        offset += len(value.encode()) + 1
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack("<7I", 0x950412DE, 0, n, 28, 28 + 8 * n, 0, 0)
    path.write_bytes(header + struct.pack(f"<{4 * n}I", *table_ids, *table_strs) + ids + strs)


@pytest.fixture
def campaigns(tmp_path) -> Path:
    root = tmp_path / "wesnoth"
    base = root / "usr/share/games/wesnoth/1.16/translations"
    write_mo(base / "locale/de/LC_MESSAGES/wesnoth-httt.mo", {
        "Back to the abyss, spawn of filth!": "Zurück in die Unterwelt, Kreatur des Bösen!",
        "Move $unit to the signpost.": "Bewege $unit zum Wegweiser.",  # a game variable: dropped
        "<span color='red'>Defeat</span>": "<span color='red'>Niederlage</span>",  # markup: dropped
        "Ok": "Ok",  # untranslated: dropped
        "Two\nlines": "Zwei\nZeilen",  # not one line: dropped
    })  # fmt: skip
    write_mo(base / "locale/de/LC_MESSAGES/wesnoth-trow.mo", {
        "Back to the abyss, spawn of filth!": "Zweite Übersetzung",  # seen already in de: the first wins
        "The Swamp of Esten": "Die Sümpfe von Esten",
    })  # fmt: skip
    write_mo(base / "locale/fr/LC_MESSAGES/wesnoth-httt.mo", {"The Swamp of Esten": "Le Marais d’Esten"})
    return root


def test_sentences_of_every_language_without_markup(campaigns, tmp_path):
    assert wesnoth_languages(campaigns) == ["de", "fr"]
    data = load_wesnoth_parallel(campaigns, cache_dir=str(tmp_path / "cache"))
    rows = {(r["target_lang"], r["source"]): r["target"] for r in data}
    assert rows == {
        ("de", "Back to the abyss, spawn of filth!"): "Zurück in die Unterwelt, Kreatur des Bösen!",
        ("de", "The Swamp of Esten"): "Die Sümpfe von Esten",
        ("fr", "The Swamp of Esten"): "Le Marais d’Esten",
    }
    ids = {r["id"] for r in data if r["source"] == "The Swamp of Esten"}
    assert ids == {message_id("The Swamp of Esten")}  # one id across languages: X -> Y pairs join on it
    assert set(data["source_lang"]) == {"en"}


def test_one_language_and_the_cache(campaigns, tmp_path):
    cache = str(tmp_path / "cache")
    fr = load_wesnoth_parallel(campaigns, "fr", cache_dir=cache)
    assert fr["target"] == ["Le Marais d’Esten"]
    again = load_wesnoth_parallel(campaigns, ["fr"], cache_dir=cache)
    assert again.cache_files and again.cache_files[0]["filename"].startswith(cache)  # read back from disk
    with pytest.raises(ValueError, match=r"'frr' \(did you mean 'fr'\?\)"):
        load_wesnoth_parallel(campaigns, ["frr"], cache_dir=cache)


def test_a_folder_without_catalogues_says_how_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="fetch_wesnoth"):
        load_wesnoth_parallel(tmp_path, cache_dir=str(tmp_path / "cache"))


def _apt_can_download() -> bool:
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        return False
    found = subprocess.run(["apt-cache", "show", "wesnoth-1.16-httt"], capture_output=True, text=True)
    return found.returncode == 0


@pytest.mark.skipif(
    not _apt_can_download(), reason="needs apt-get with Debian's package lists (apt-get update)"
)
def test_the_real_campaign_from_debian(tmp_path_factory):
    """One real campaign (Heir to the Throne) fetched from Debian, read as a user would."""
    cache = Path.home() / ".cache" / "hf_metatransfer" / "wesnoth-httt"
    if not list(cache.glob("**/*.mo")):
        fetch_wesnoth(cache, campaigns=("httt",))
    data = load_wesnoth_parallel(cache, ["de", "fr", "ru"], cache_dir=str(tmp_path_factory.mktemp("wesnoth")))
    counts = {lang: data["target_lang"].count(lang) for lang in ("de", "fr", "ru")}
    assert all(n > 300 for n in counts.values()), counts
    assert not any("$" in s or "{" in s for s in data["source"])
