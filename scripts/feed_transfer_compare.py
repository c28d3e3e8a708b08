"""Compare click -> purchase transfer designs on the example feed, through the real CLI; print a Markdown table.

    python scripts/feed_transfer_compare.py                 # 4 designs x 3 seeds x 10 epochs: ~5 min on 2 idle cores
    python scripts/feed_transfer_compare.py --seeds 1 --epochs 3   # a quick look

The designs (each `mtlrun` run trains all four feed tasks; only click and purchase are scored):

* hard_sharing: `experiment=tabular_example`; purchase is P(purchase | click), trained on clicked rows;
* inputs_from: the same, with purchase's head reading click's estimate (`tasks.purchase.inputs_from=[click]`);
* esmm: `experiment=esmm_feed`; purchase is pCTCVR = pCTR x pCVR over every impression (target `conversion`),
  and `mtlrun predict` writes pCVR as `purchase_cvr`;
* aitm: `architecture=aitm` with the sequence [click, purchase] and the calibrator (alpha = 0.6), purchase trained
  on `conversion` over every impression.

Every run trains on the same fixed 70/15/15 split of feed.csv (a copy with a `split` column, drawn with seed 0),
selects its epoch on validation, and predicts the test rows with `mtlrun predict`. From the predictions:

* click AUC over every test impression;
* purchase AUC on the clicked test impressions, of each design's pCVR (the purchase prediction of a design trained
  on clicked rows; ESMM's `purchase_cvr`; for a design trained on `conversion`, P(click and purchase) / pCTR);
* conversion AUC over every test impression of P(click and purchase): pCTR x pCVR for designs trained on clicked
  rows, the purchase prediction itself for those trained on `conversion`.

Which case a run is in is read from its config.yaml (tasks.purchase.target). The table gives mean ± std over seeds.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parent.parent
FEED = ROOT / "mtlrun" / "examples" / "feed" / "feed.csv"
FUNNEL = ["tasks.purchase.target=conversion"]  # click and purchase over every impression
DESIGNS = {
    "hard_sharing": ["experiment=tabular_example"],
    "inputs_from": ["experiment=tabular_example", "tasks.purchase.inputs_from=[click]"],
    "esmm": ["experiment=esmm_feed"],
    "aitm": [
        "experiment=tabular_example",
        "architecture=aitm",
        "architecture.sequence=[click,purchase]",
        "architecture.calibrator_strength=0.6",
        *FUNNEL,
    ],
}
COLUMNS = {
    "click_auc": "click AUC (all)",
    "cvr_auc": "purchase AUC (clicked rows)",
    "ctcvr_auc": "conversion AUC (all impressions)",
}


def split_files(folder: Path) -> tuple[Path, Path]:
    """feed.csv with a fixed random `split` column (70/15/15, seed 0), and its test rows alone."""
    table = pd.read_csv(FEED)
    order = np.random.default_rng(0).permutation(len(table))
    split = np.empty(len(table), dtype=object)
    n_train, n_val = int(0.7 * len(table)), int(0.15 * len(table))
    split[order[:n_train]] = "train"
    split[order[n_train : n_train + n_val]] = "val"
    split[order[n_train + n_val :]] = "test"
    table["split"] = split
    folder.mkdir(parents=True, exist_ok=True)
    full, test = folder / "feed_split.csv", folder / "feed_test.csv"
    table.to_csv(full, index=False)
    table[table.split == "test"].to_csv(test, index=False)
    return full, test


def train(run: Path, overrides: list[str], data: Path, seed: int, epochs: int) -> None:
    args = [*overrides, f"data.path={data}", "data.split_column=split", f"seed={seed}", "trainer.plots=false"]
    args += [f"trainer.epochs={epochs}"]
    done = subprocess.run(
        [sys.executable, "-m", "mtlrun", *args, f"hydra.run.dir={run}"], capture_output=True, text=True
    )
    if done.returncode != 0:
        sys.exit(f"mtlrun {' '.join(args)} failed:\n{done.stderr[-3000:]}")


def scores(run: Path, test: Path) -> dict[str, float]:
    """The three AUCs of one trained run on the test rows (module docstring)."""
    from mtlrun.predict import Options, predict

    table, _ = predict(
        Options(run=run, path=str(test), keep=["impression_id"], out=run / "test_predictions.csv")
    )
    truth = pd.read_csv(test).set_index("impression_id").loc[table.impression_id]
    whole_space = OmegaConf.load(run / "config.yaml").tasks.purchase.get("target") == "conversion"
    if "purchase_cvr" in table:
        cvr = table.purchase_cvr.to_numpy()
    elif whole_space:
        cvr = (table.purchase / table.click).to_numpy()
    else:
        cvr = table.purchase.to_numpy()
    ctcvr = table.purchase.to_numpy() if whole_space else (table.click * table.purchase).to_numpy()
    clicked = truth.click.to_numpy() == 1
    return {
        "click_auc": roc_auc_score(truth.click, table.click),
        "cvr_auc": roc_auc_score(truth.purchase.to_numpy()[clicked].astype(int), cvr[clicked]),
        "ctcvr_auc": roc_auc_score(truth.conversion, ctcvr),
    }


def provenance() -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=ROOT).stdout
    import torch

    return (
        f"{datetime.date.today().isoformat()}, commit {commit.stdout.strip() or '?'}"
        f"{' (with uncommitted changes)' if dirty.strip() else ''}, {platform.machine()} "
        f"{platform.processor() or platform.system()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
    )


def markdown(results: pd.DataFrame, seeds: int, epochs: int, minutes: float) -> str:
    """The table, one row per design in `results`, with the date, commit and machine."""
    lines = [
        f"Feed transfer designs, test split, mean ± std over {seeds} seed(s), "
        f"{epochs} epochs each ({minutes:.1f} min): {provenance()}.",
        "",
        "| design | " + " | ".join(COLUMNS.values()) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for design in results.design.unique():
        rows = results[results.design == design]
        cells = [f"{rows[c].mean():.4f} ± {rows[c].std(ddof=1) if len(rows) > 1 else 0:.4f}" for c in COLUMNS]
        lines.append(f"| {design} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/feed_transfer"), help="folder for the runs")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per design (0, 1, ...)")
    parser.add_argument(
        "--epochs", type=int, default=10, help="epochs per run (the presets' best epoch is ~10)"
    )
    parser.add_argument("--designs", nargs="+", default=list(DESIGNS), choices=list(DESIGNS))
    args = parser.parse_args()
    if args.out.exists():
        sys.exit(f"{args.out} exists; pick another --out (runs are never overwritten)")
    start = time.perf_counter()
    data, test = split_files(args.out)
    rows = []
    for design in args.designs:
        for seed in range(args.seeds):
            run = args.out / f"{design}_seed{seed}"
            train(run, DESIGNS[design], data, seed, args.epochs)
            rows.append({"design": design, "seed": seed, **scores(run, test)})
            print(
                f"{design} seed {seed}: "
                + ", ".join(f"{k} {v:.4f}" for k, v in rows[-1].items() if k in COLUMNS)
            )
    results = pd.DataFrame(rows)
    results.to_csv(args.out / "results.csv", index=False)
    print()
    print(markdown(results, args.seeds, args.epochs, (time.perf_counter() - start) / 60))


if __name__ == "__main__":
    main()
