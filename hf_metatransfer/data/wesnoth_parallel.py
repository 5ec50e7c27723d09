"""A second parallel-text domain: the story dialogue and narration of The Battle for Wesnoth's campaigns.

Django's catalogues are short UI strings that share placeholders and untranslated words with their English source
(copying the source scores chrF 30 there); Wesnoth's campaigns are sentences of a fantasy story ("Back to the abyss,
spawn of filth!"), about 3,400 English -> X pairs a language in 40+ languages from five campaigns, where copying
the source scores about 17. They arrive as Debian packages (``wesnoth-1.16-<campaign>``, GPL-2+):
:func:`fetch_wesnoth` downloads and unpacks them (``apt-get download`` + ``dpkg -x``, nothing installed), or
``apt-get install`` them and read ``/usr/share/games/wesnoth``. :func:`load_wesnoth_parallel` reads the catalogues
(nothing of Wesnoth runs) into the columns of :mod:`hf_metatransfer.data.gettext_catalogues`, keeping one-line
messages of 3-300 characters without game markup (``$variables``, ``{MACROS}``, ``<span>``, ``[tags]``).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import datasets

from .gettext_catalogues import (
    SOURCE_LANG,
    chosen_languages,
    default_cache_root,
    find_catalogues,
    parallel_dataset,
)

__all__ = ["WESNOTH_CAMPAIGNS", "fetch_wesnoth", "load_wesnoth_parallel", "wesnoth_languages"]

#: Heir to the Throne, The Rise of Wesnoth, Eastern Invasion, Legend of Wesmere, Sceptre of Fire... their packages
WESNOTH_CAMPAIGNS = ("httt", "trow", "ei", "low", "sotbe")
INSTALLED = Path("/usr/share/games/wesnoth")
_MARKUP = re.compile(r"[$<>{}@&\[\]]|\\n")
# Bump when the extraction logic changes so that old caches are not reused.
_CACHE_FORMAT = 1


def _keep(source: str, target: str) -> bool:
    """A sentence of the story: one line, 3-300 characters, no game markup on either side."""
    text = source + target
    return 3 <= len(source) <= 300 and "\n" not in text and not _MARKUP.search(text)


def fetch_wesnoth(
    dest: str | Path, campaigns: tuple[str, ...] = WESNOTH_CAMPAIGNS, branch: str = "1.16"
) -> Path:
    """Download the campaigns' Debian packages and unpack them under ``dest`` (about 54 MB; nothing installed).

    Needs ``apt-get`` and ``dpkg`` (Debian, Ubuntu) with the package lists fetched once (``apt-get update``).
    """
    dest = Path(dest)
    missing = [tool for tool in ("apt-get", "dpkg") if shutil.which(tool) is None]
    if missing:
        raise RuntimeError(f"fetch_wesnoth needs {' and '.join(missing)} (Debian or Ubuntu). Elsewhere, install "
                           f"Wesnoth {branch} and pass its data folder to load_wesnoth_parallel(root=...).")  # fmt: skip
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        for campaign in campaigns:
            package = f"wesnoth-{branch}-{campaign}"
            done = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"`apt-get download {package}` failed ({done.stderr.strip()[-300:]}): run "
                                   "`apt-get update` once, or check the campaign and branch names.")  # fmt: skip
        for deb in sorted(Path(tmp).glob("*.deb")):
            subprocess.run(["dpkg", "-x", str(deb), str(dest)], check=True)
    return dest


def _root(root: str | Path | None) -> Path:
    if root is not None:
        return Path(root)
    if INSTALLED.is_dir():
        return INSTALLED
    raise FileNotFoundError(f"No Wesnoth data at {INSTALLED}: fetch_wesnoth(folder) downloads and unpacks the "
                            "campaigns (Debian/Ubuntu), then load_wesnoth_parallel(root=folder).")  # fmt: skip


def wesnoth_languages(root: str | Path | None = None) -> list[str]:
    """Target languages with catalogues under ``root`` (sorted locale names; English, the source, left out)."""
    return sorted(lang for lang in find_catalogues(_root(root)) if lang != SOURCE_LANG)


def load_wesnoth_parallel(
    root: str | Path | None = None, languages: list[str] | str | None = None, cache_dir: str | None = None
) -> datasets.Dataset:
    """English -> X sentence pairs of the Wesnoth campaigns found under ``root``.

    Args:
        root: a folder :func:`fetch_wesnoth` filled, or Wesnoth's installed data (default ``/usr/share/games/wesnoth``).
        languages: locale names (see :func:`wesnoth_languages`); ``None`` means all of them.
        cache_dir: where the dataset is saved; default ``$HF_HOME/hf_metatransfer/wesnoth_parallel``.

    Returns:
        The columns ``source``, ``target``, ``source_lang`` (``"en"``), ``target_lang`` and ``id``, as
        :func:`~hf_metatransfer.data.load_django_parallel` gives them.
    """
    root = _root(root)
    catalogues = find_catalogues(root)
    if not catalogues:
        raise FileNotFoundError(f"No gettext catalogues (locale/<lang>/LC_MESSAGES/*.mo) under {root}: give the "
                                "folder fetch_wesnoth filled, or Wesnoth's data folder.")  # fmt: skip
    langs = chosen_languages(languages, wesnoth_languages(root), "Wesnoth")
    files = sorted(
        (str(Path(p).relative_to(root)), Path(p).stat().st_size) for ps in catalogues.values() for p in ps
    )
    version = hashlib.sha256(repr(files).encode()).hexdigest()[:12]  # the catalogues read, by name and size
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_root("wesnoth_parallel")
    return parallel_dataset(catalogues, langs, cache_root, version, {"format": _CACHE_FORMAT}, keep=_keep,
                            description="Reading Wesnoth catalogues")  # fmt: skip
