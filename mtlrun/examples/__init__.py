"""Example data shipped inside the package, so every documented command works from any folder after
``pip install``: ``feed/feed.csv`` (the table ``experiment=tabular_example`` trains on) and
``feed/feed_new.csv`` (new rows to predict), both written by scripts/make_tabular_example.py.

Configs name them with the resolver ``${mtlrun.example:feed/feed.csv}`` (registered by
`mtlrun.schema.register`), which gives the file's absolute path wherever mtlrun is installed.
"""

from __future__ import annotations

from pathlib import Path

from mtlrun.errors import ConfigError

FOLDER = Path(__file__).resolve().parent


def path(name: str) -> str:
    """The absolute path of the shipped example file ``name`` (e.g. ``feed/feed.csv``)."""
    file = FOLDER / name
    if not file.is_file():
        shipped = sorted(str(p.relative_to(FOLDER)) for p in FOLDER.rglob("*.csv"))
        raise ConfigError(f"${{mtlrun.example:{name}}}: no such example file; shipped: {', '.join(shipped)}")
    return str(file)
