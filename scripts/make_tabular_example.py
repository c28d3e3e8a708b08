"""Write the example table of ``data=tabular``: a small recommender feed with four tasks of three kinds.

    python scripts/make_tabular_example.py            # writes mtlrun/examples/feed/feed.csv and feed_new.csv

Each row is one impression of an item in a user's feed. Features: the user's age (some missing), tenure
and interest segment, the item's price (some missing), quality score and category, the feed position, the
hour, the device (some missing) and the country. Targets, drawn from the features (so a model has something
to learn) with a fixed seed:

* ``click`` (binary, about 20 % positive): more likely when the item's category matches the user's
  interest, for better items, high in the feed, in the evening, on phones;
* ``purchase`` (binary): known only for clicked rows (empty otherwise), less likely for expensive items;
* ``conversion`` (binary): click and purchase, over every impression (0 without a click): the label a
  model of the whole impression space (``architecture=esmm``) trains its click-and-buy estimate on. It is
  derived from the two columns above, drawing nothing, so every other column is what it was without it;
* ``dwell_seconds`` (regression, seconds, a scale unlike the other targets): longer after a click and for
  long-read categories; a few values are missing (logging gaps);
* ``reaction`` (multiclass, text labels): none, like, share or hide.

``feed_new.csv`` holds further impressions with the features only (no targets), for ``mtlrun predict``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

CATEGORIES = ["news", "sports", "fashion", "tech", "food", "travel", "music", "gaming"]
SEGMENTS = {
    "sports_fan": "sports",
    "techie": "tech",
    "foodie": "food",
    "traveller": "travel",
    "general": None,
}
COUNTRIES = ["US", "GB", "DE", "FR", "IN", "BR", "JP", "CA", "ES", "IT"]
DEVICES = ["ios", "android", "web"]
REACTIONS = ["none", "like", "share", "hide"]


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def features(n: int, rng: np.random.Generator) -> pd.DataFrame:
    segment = rng.choice(list(SEGMENTS), size=n, p=[0.2, 0.2, 0.15, 0.15, 0.3])
    frame = pd.DataFrame(
        {
            "user_age": rng.integers(18, 71, size=n).astype(float),
            "user_tenure_days": np.round(rng.exponential(400.0, size=n)),
            "user_segment": segment,
            "item_category": rng.choice(CATEGORIES, size=n),
            "item_price": np.round(np.exp(rng.normal(3.2, 0.8, size=n)), 2),
            "item_quality": np.round(rng.beta(2.0, 2.0, size=n), 3),
            "position": rng.integers(1, 21, size=n),
            "hour": rng.integers(0, 24, size=n),
            "device": rng.choice(DEVICES, size=n, p=[0.45, 0.4, 0.15]).astype(object),
            "country": rng.choice(
                COUNTRIES, size=n, p=[0.3, 0.1, 0.1, 0.08, 0.12, 0.08, 0.07, 0.06, 0.05, 0.04]
            ),
        }
    )
    frame.loc[rng.random(n) < 0.08, "user_age"] = np.nan
    frame.loc[rng.random(n) < 0.05, "item_price"] = np.nan
    frame.loc[rng.random(n) < 0.03, "device"] = None
    frame["user_age"] = frame.user_age.astype("Int64")  # whole years; empty where missing
    frame["user_tenure_days"] = frame.user_tenure_days.astype(int)
    return frame


def targets(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    n = len(frame)
    interest = frame.user_segment.map(SEGMENTS)
    match = (interest == frame.item_category).to_numpy(dtype=float)
    quality = (frame.item_quality.to_numpy() - 0.5) * 4.0  # about -2 .. 2
    evening = frame.hour.between(18, 23).to_numpy(dtype=float)
    device = frame.device.map({"ios": 0.3, "android": 0.1, "web": -0.4}).fillna(0.0).to_numpy()
    price = frame.item_price.fillna(25.0).to_numpy()

    click_logit = -1.2 + 2.4 * match + 0.9 * quality - 0.1 * (frame.position.to_numpy() - 1)
    click_logit += 0.6 * evening + device
    click = rng.random(n) < sigmoid(click_logit)

    rich = frame.country.isin(["US", "GB", "DE", "CA"]).to_numpy(dtype=float)
    tenure = np.log1p(frame.user_tenure_days.to_numpy()) - 5.0
    buy_logit = -0.4 - 1.6 * np.log(price / 25.0) + 0.6 * quality + 1.0 * rich + 0.4 * tenure + 0.5 * match
    purchase = np.where(click, (rng.random(n) < sigmoid(buy_logit)).astype(float), np.nan)

    long_read = frame.item_category.isin(["news", "tech", "travel"]).to_numpy(dtype=float)
    log_dwell = 1.2 + 1.2 * click + 0.4 * quality + 0.8 * long_read + 0.3 * rng.normal(size=n)
    dwell = np.round(np.exp(log_dwell), 1)
    dwell[rng.random(n) < 0.02] = np.nan

    logits = np.stack(
        [
            np.zeros(n),
            -1.0 + 2.0 * match + 1.0 * quality,
            -2.8 + 2.0 * match + 1.2 * quality + 1.2 * (frame.user_segment == "general").to_numpy(),
            -1.5 - 1.2 * quality - 2.0 * match + 0.08 * frame.position.to_numpy(),
        ],
        axis=1,
    )
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    reaction = (rng.random((n, 1)) < probabilities.cumsum(1)).argmax(1)
    return pd.DataFrame(
        {
            "click": click.astype(int),
            "purchase": pd.array(purchase, dtype="Int64"),
            "conversion": (click & (purchase == 1)).astype(int),
            "dwell_seconds": dwell,
            "reaction": np.array(REACTIONS)[reaction],
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("mtlrun/examples/feed"), help="folder to write into")
    parser.add_argument("--rows", type=int, default=6000, help="impressions in feed.csv")
    parser.add_argument("--new-rows", type=int, default=500, help="impressions in feed_new.csv (no targets)")
    parser.add_argument("--seed", type=int, default=0, help="draws every feature and target")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    table = features(args.rows, rng)
    table = pd.concat([table, targets(table, rng)], axis=1)
    table.insert(0, "impression_id", np.arange(args.rows))
    table.to_csv(args.out / "feed.csv", index=False)
    new = features(args.new_rows, rng)
    new.insert(0, "impression_id", np.arange(args.rows, args.rows + args.new_rows))
    new.to_csv(args.out / "feed_new.csv", index=False)
    for name in ("feed.csv", "feed_new.csv"):
        path = args.out / name
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
