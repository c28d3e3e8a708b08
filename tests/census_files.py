"""Small files in the format of UCI Census-Income (KDD): headerless, 42 values per line separated by ", ",
value strings as in census-income.data (" 50000+.", " - 50000.", " Never married", " ?", " Not in universe").

Used by test_census_income.py and by conftest.py (the catalogue-wide tests build data=census_income on them).
Values are drawn at random from a few real ones per column; nothing here is learnable beyond chance.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

# A few real values of each column, in file order; ints are drawn as [low, high] ranges, floats likewise.
VALUES: dict[str, list | tuple] = {
    "age": (0, 90),
    "class_worker": ["Not in universe", "Private", "Self-employed-not incorporated", "Local government"],
    "det_ind_code": (0, 51),
    "det_occ_code": (0, 46),
    "education": [
        "Children",
        "High school graduate",
        "Some college but no degree",
        "Bachelors degree(BA AB BS)",
    ],
    "wage_per_hour": (0, 2000),
    "hs_college": ["Not in universe", "High school", "College or university"],
    "marital_stat": ["Never married", "Married-civilian spouse present", "Divorced", "Widowed"],
    "major_ind_code": [
        "Not in universe or children",
        "Retail trade",
        "Manufacturing-durable goods",
        "Education",
    ],
    "major_occ_code": ["Not in universe", "Adm support including clerical", "Professional specialty"],
    "race": ["White", "Black", "Asian or Pacific Islander", "Amer Indian Aleut or Eskimo", "Other"],
    "hisp_origin": ["All other", "Mexican-American", "Central or South American", "NA", "Do not know"],
    "sex": ["Female", "Male"],
    "union_member": ["Not in universe", "No", "Yes"],
    "unemp_reason": ["Not in universe", "Other job loser", "Re-entrant", "Job loser - on layoff"],
    "full_or_part_emp": ["Children or Armed Forces", "Full-time schedules", "Not in labor force"],
    "capital_gains": (0, 99999),
    "capital_losses": (0, 4356),
    "stock_dividends": (0, 99999),
    "tax_filer_stat": ["Nonfiler", "Joint both under 65", "Single", "Head of household"],
    "region_prev_res": ["Not in universe", "South", "West", "Abroad"],
    "state_prev_res": ["Not in universe", "California", "Utah", "?"],
    "det_hh_fam_stat": ["Householder", "Child <18 never marr not in subfamily", "Spouse of householder"],
    "det_hh_summ": ["Householder", "Child under 18 never married", "Spouse of householder"],
    "instance_weight": (37.87, 18656.3),
    "mig_chg_msa": ["?", "Nonmover", "MSA to MSA", "Not in universe"],
    "mig_chg_reg": ["?", "Nonmover", "Same county", "Not in universe"],
    "mig_move_reg": ["?", "Nonmover", "Different state in South", "Not in universe"],
    "mig_same": ["Not in universe under 1 year old", "Yes", "No"],
    "mig_prev_sunbelt": ["?", "Not in universe", "Yes", "No"],
    "num_emp": (0, 6),
    "fam_under_18": ["Not in universe", "Both parents present", "Mother only present"],
    "country_father": ["United-States", "Mexico", "?", "Philippines"],
    "country_mother": ["United-States", "Mexico", "?", "Germany"],
    "country_self": ["United-States", "Mexico", "?", "Puerto-Rico"],
    "citizenship": ["Native- Born in the United States", "Foreign born- Not a citizen of U S "],
    "own_or_self": (0, 2),
    "vet_question": ["Not in universe", "No", "Yes"],
    "vet_benefits": (0, 2),
    "weeks_worked": (0, 52),
    "year": (94, 95),
    "income_50k": ["- 50000.", "50000+."],
}
POSITIVE_INCOME = 0.25  # share of " 50000+." rows (the real files: 6.2 %), so tiny splits hold both labels


def census_rows(n: int, seed: int = 0) -> list[list[str]]:
    """``n`` rows of 42 value strings (without the leading space the files put before each value)."""
    rng = np.random.default_rng(seed)
    columns = []
    for name, values in VALUES.items():
        if name == "income_50k":
            drawn = np.where(rng.random(n) < POSITIVE_INCOME, values[1], values[0])
        elif isinstance(values, list):
            drawn = rng.choice(np.array(values, dtype=object), n)
        elif isinstance(values[0], float):
            drawn = [f"{v:.2f}" for v in rng.uniform(*values, n)]
        else:
            # mostly 0 for the money columns, as in the real files
            ints = rng.integers(values[0], values[1] + 1, n)
            if name in ("wage_per_hour", "capital_gains", "capital_losses", "stock_dividends"):
                ints = np.where(rng.random(n) < 0.8, 0, ints)
            drawn = ints
        columns.append([str(v) for v in drawn])
    return [list(row) for row in zip(*columns, strict=True)]


def write_census_file(path: Path, rows: list[list[str]]) -> Path:
    """``rows`` as a census-income file: each value preceded by a space, separated by commas; gzip for .gz."""
    text = "".join(",".join(f" {value}" for value in row)[1:] + "\n" for row in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as handle:
            handle.write(text)
    else:
        path.write_text(text)
    return path


def write_census_files(
    root: Path, n_train: int = 96, n_test: int = 80, seed: int = 0, gz: tuple[bool, bool] = (False, True)
) -> tuple[list[list[str]], list[list[str]]]:
    """census-income.data and census-income.test in ``root`` (``gz``: which of them is gzipped); returns
    their rows (train, test)."""
    train, test = census_rows(n_train, seed), census_rows(n_test, seed + 1)
    for name, rows, zipped in (("census-income.data", train, gz[0]), ("census-income.test", test, gz[1])):
        write_census_file(root / (f"{name}.gz" if zipped else name), rows)
    return train, test
