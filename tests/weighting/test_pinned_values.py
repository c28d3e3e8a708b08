"""Pinned outputs of every weighting method on fixed inputs: a change to any number is a change of behaviour.

Each gradient-based method (every conf/weighting option whose class has `needs_task_grads`) is built with
its shipped defaults for three tasks and applied, in float64, to the two gradient matrices of CASES with
their losses; the table pins the weights it reports (`last_weights`) and the direction it returns. The
cheap loss-based methods are pinned on the cases' losses: their weights and objective, after they have seen
the two epoch ends of DWA_EPOCH_MEANS (only DWA reads them). GradNorm is not pinned here: it learns only
through a model's last shared layer (tests/weighting/test_weighting_gradnorm.py).

How the numbers were produced: by the code itself, `python tests/weighting/test_pinned_values.py --print`,
which builds every method with `mtlrun.weighting.load`, calls it once per case after `torch.manual_seed(0)`
(the seed fixes the draws of the randomized methods: PCGrad, GradVac, GradDrop, RLW), and prints both tables
in the form below, with the notes of NOTES. Where a closed form is known, the note says so, and
test_the_closed_forms_behind_the_notes checks it independently of the table. To regenerate after an
intended change: run the command, check each changed number against the method's maths (its module
docstring), paste the printed tables over GRADIENT_PINS and LOSS_PINS, and run `ruff format` on this file.

Numbers are compared with rtol=1e-4; entries that are zero up to rounding also get an absolute tolerance of
1e-9 times the largest entry of their vector.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mtlrun.instantiate import resolve_target
from mtlrun.paths import config_dir
from mtlrun.weighting import load

TASKS = ["t0", "t1", "t2"]

# (gradients [T=3, P=4], losses [T]) in float64
CASES = {
    # mild conflict: only g_1 and g_2 pull against each other (g_1ᵀg_2 = -0.16); norms within a factor 1.5
    "mild": (
        [[1.0, 0.5, 0.0, 0.2], [0.8, -0.2, 0.4, 0.0], [-0.2, 0.6, 0.3, 0.5]],
        [0.9, 2.5, 0.3],
    ),
    # a strongly conflicting pair (cos(g_0, g_1) = -0.98) and norms from 0.12 to 21
    "strong": (
        [[2.0, 1.0, 0.0, -1.0], [-18.0, -6.0, 3.0, 9.0], [0.05, -0.02, 0.1, 0.03]],
        [1.2, 40.0, 0.05],
    ),
}
DWA_EPOCH_MEANS = ([1.0, 2.0, 0.5], [0.8, 1.9, 0.2])  # epoch-mean losses DWA has seen before a case

LOSS_OPTIONS = ["dwa", "equal", "famo", "gls", "rlw", "static", "uncertainty"]

# Closed forms and other facts behind a number, printed above it by --print;
# test_the_closed_forms_behind_the_notes checks each against the pinned numbers.
NOTES = {
    ("equal", "mild"): "every weight 1; objective = Σ_t L_t",
    ("static", "mild"): "shipped defaults: every weight 1, as equal",
    ("uncertainty", "mild"): "s_t = 0: every weight ½ (regression tasks); objective = ½ Σ_t L_t",
    ("gls", "mild"): "objective = (Π_t L_t)^(1/3); weights = objective / (3 L_t)",
    ("famo", "mild"): "first step, z = 1/3: weights = (1/L_t) / Σ_j (1/L_j)",
    ("dwa", "mild"): "r = (0.8/1.0, 1.9/2.0, 0.2/0.5): weights = 3 softmax(r / 2); objective = Σ_t w_t L_t",
    ("dwa", "strong"): "the weights of the epoch do not depend on the step's losses: as on mild",
    ("rlw", "strong"): "the same seed draws the same weights as on mild",
    ("cagrad", "mild"): "weights = (1/3 + λ w*_t) / (1 + c²), with w*_0 = 0: weight 1 / (3 · 1.16) for t0",
    ("cagrad", "strong"): "w* = e_0: weight 1 / (3 · 1.16) for t1 and t2",
    ("gradvac", "mild"): "first step, targets φ̂ = 0: PCGrad's projection, the same numbers as pcgrad",
    ("imtl", "mild"): "weights sum to 1",
    ("imtl", "strong"): "weights sum to 1",
    ("mgda", "mild"): "min-norm point of {g_1, g_2}: α_1 = (g_2 − g_1)ᵀg_2 / ‖g_1 − g_2‖² = 9/19",
    ("mgda", "strong"): "min-norm point of {g_1, g_2}: α_1 = (g_2 − g_1)ᵀg_2 / ‖g_1 − g_2‖²",
    ("nashmtl", "mild"): "‖d‖ = √3 clipped to max_norm = 1; direction = Gᵀ weights",
    ("nashmtl", "strong"): "‖d‖ = √3 clipped to max_norm = 1; direction = Gᵀ weights",
    ("pcgrad", "mild"): "one conflicting pair, order-free: weights (1, 1 + 0.16/‖g_1‖², 1 + 0.16/‖g_2‖²)",
    ("upgrad", "mild"): "each projection of the one conflicting pair lies in the cone: pcgrad's weights / 3",
}

GRADIENT_PINS: dict[tuple[str, str], dict[str, list[float]]] = {
    ("aligned_mtl", "mild"): {
        "weights": [0.1508956314, 0.5838575587, 0.612950667],
        "direction": [0.4953915449, 0.3264467042, 0.4174282236, 0.3366544598],
    },
    ("aligned_mtl", "strong"): {
        "weights": [0.1555481481, 0.0222921052, 0.8809607268],
        "direction": [-0.04611356105, 0.004176302368, 0.1549723883, 0.0715096205],
    },
    # weights = (1/3 + λ w*_t) / (1 + c²), with w*_0 = 0: weight 1 / (3 · 1.16) for t0
    ("cagrad", "mild"): {
        "weights": [0.2873563218, 0.3695796539, 0.5702864609],
        "direction": [0.4689627528, 0.4119341067, 0.3189177998, 0.3426144948],
    },
    # w* = e_0: weight 1 / (3 · 1.16) for t1 and t2
    ("cagrad", "strong"): {
        "weights": [1.169864717, 0.2873563218, 0.2873563218],
        "direction": [-2.818316542, -0.56002034, 0.8908045977, 1.424962869],
    },
    ("graddrop", "mild"): {
        "weights": [-0.01756954612, 0.2303074671, 1.757247438],
        "direction": [-0.2, 1.1, 0.7, 0.7],
    },
    ("graddrop", "strong"): {
        "weights": [2.715017129, 1.094925538, -29.37800645],
        "direction": [-18.0, -6.02, 3.1, -1.0],
    },
    # first step, targets φ̂ = 0: PCGrad's projection, the same numbers as pcgrad
    ("gradvac", "mild"): {
        "weights": [1.0, 1.19047619, 1.216216216],
        "direction": [1.709137709, 0.9916344916, 0.8410553411, 0.8081081081],
    },
    ("gradvac", "strong"): {
        "weights": [9.373188406, 1.1138, 16.2173913],
        "direction": [-0.4911536232, 2.36604058, 4.96313913, 1.137533333],
    },
    # weights sum to 1
    ("imtl", "mild"): {
        "weights": [-0.07133067458, 0.5364273633, 0.5349033113],
        "direction": [0.2508305538, 0.1779911769, 0.3750419387, 0.2531855207],
    },
    # weights sum to 1
    ("imtl", "strong"): {
        "weights": [-2.196856862, -0.2511846916, 3.448041553],
        "direction": [0.3000128037, -0.7587095429, -0.4087499196, 0.03963588359],
    },
    # min-norm point of {g_1, g_2}: α_1 = (g_2 − g_1)ᵀg_2 / ‖g_1 − g_2‖² = 9/19
    ("mgda", "mild"): {
        "weights": [0.0, 0.4736842105, 0.5263157895],
        "direction": [0.2736842105, 0.2210526316, 0.3473684211, 0.2631578947],
    },
    # min-norm point of {g_1, g_2}: α_1 = (g_2 − g_1)ᵀg_2 / ‖g_1 − g_2‖²
    ("mgda", "strong"): {
        "weights": [0.0, 0.0004968543657, 0.9995031456],
        "direction": [0.0410317787, -0.02297118911, 0.1014408777, 0.03445678366],
    },
    # ‖d‖ = √3 clipped to max_norm = 1; direction = Gᵀ weights
    ("nashmtl", "mild"): {
        "weights": [0.3436237608, 0.5568101897, 0.6850571476],
        "direction": [0.652060483, 0.471484131, 0.4282412201, 0.4112533259],
    },
    # ‖d‖ = √3 clipped to max_norm = 1; direction = Gᵀ weights
    ("nashmtl", "strong"): {
        "weights": [1.519374833, 0.1780875359, 3.712076175],
        "direction": [0.01877782854, 0.3766080941, 0.9054702252, 0.1947752753],
    },
    # one conflicting pair, order-free: weights (1, 1 + 0.16/‖g_1‖², 1 + 0.16/‖g_2‖²)
    ("pcgrad", "mild"): {
        "weights": [1.0, 1.19047619, 1.216216216],
        "direction": [1.709137709, 0.9916344916, 0.8410553411, 0.8081081081],
    },
    ("pcgrad", "strong"): {
        "weights": [9.5, 1.1138, 1.0],
        "direction": [-0.9984, 2.7972, 3.4414, 0.5542],
    },
    # each projection of the one conflicting pair lies in the cone: pcgrad's weights / 3
    ("upgrad", "mild"): {
        "weights": [0.3333333333, 0.3968253968, 0.4054054054],
        "direction": [0.5697125697, 0.3305448305, 0.2803517804, 0.2693693694],
    },
    ("upgrad", "strong"): {
        "weights": [3.166666667, 0.3712666667, 0.3333333333],
        "direction": [-0.3328, 0.9324, 1.147133333, 0.1847333333],
    },
}

LOSS_PINS: dict[tuple[str, str], dict[str, object]] = {
    # r = (0.8/1.0, 1.9/2.0, 0.2/0.5): weights = 3 softmax(r / 2); objective = Σ_t w_t L_t
    ("dwa", "mild"): {
        "weights": [1.035691695, 1.116355663, 0.8479526415],
        "objective": 3.977397476,
    },
    # the weights of the epoch do not depend on the step's losses: as on mild
    ("dwa", "strong"): {
        "weights": [1.035691695, 1.116355663, 0.8479526415],
        "objective": 45.9394542,
    },
    # every weight 1; objective = Σ_t L_t
    ("equal", "mild"): {
        "weights": [1.0, 1.0, 1.0],
        "objective": 3.7,
    },
    ("equal", "strong"): {
        "weights": [1.0, 1.0, 1.0],
        "objective": 41.25,
    },
    # first step, z = 1/3: weights = (1/L_t) / Σ_j (1/L_j)
    ("famo", "mild"): {
        "weights": [0.2293578088, 0.08256880939, 0.6880733967],
        "objective": -0.08113263643,
    },
    ("famo", "strong"): {
        "weights": [0.0399520658, 0.001198561979, 0.9588493705],
        "objective": 0.0419721509,
    },
    # objective = (Π_t L_t)^(1/3); weights = objective / (3 L_t)
    ("gls", "mild"): {
        "weights": [0.324890852, 0.1169607118, 0.9746725559],
        "objective": 0.8772053215,
    },
    ("gls", "strong"): {
        "weights": [0.3719072044, 0.01115721557, 8.925772667],
        "objective": 1.3388659,
    },
    ("rlw", "mild"): {
        "weights": [2.533902645, 0.4046776891, 0.06141968817],
        "objective": 3.310632488,
    },
    # the same seed draws the same weights as on mild
    ("rlw", "strong"): {
        "weights": [2.533902645, 0.4046776891, 0.06141968817],
        "objective": 19.23086165,
    },
    # shipped defaults: every weight 1, as equal
    ("static", "mild"): {
        "weights": [1.0, 1.0, 1.0],
        "objective": 3.7,
    },
    ("static", "strong"): {
        "weights": [1.0, 1.0, 1.0],
        "objective": 41.25,
    },
    # s_t = 0: every weight ½ (regression tasks); objective = ½ Σ_t L_t
    ("uncertainty", "mild"): {
        "weights": [0.5, 0.5, 0.5],
        "objective": 1.85,
    },
    ("uncertainty", "strong"): {
        "weights": [0.5, 0.5, 0.5],
        "objective": 20.625,
    },
}


def gradient_options() -> list[str]:
    """The conf/weighting options whose class is gradient-based (`needs_task_grads`)."""
    found = []
    for path in sorted(Path(config_dir(), "weighting").glob("*.yaml")):
        cls = resolve_target(OmegaConf.load(path), "weighting")
        if cls.needs_task_grads:
            found.append(path.stem)
    return found


def case_tensors(case: str) -> tuple[torch.Tensor, torch.Tensor]:
    grads, losses = CASES[case]
    return torch.tensor(grads, dtype=torch.float64), torch.tensor(losses, dtype=torch.float64)


def run_gradient(option: str, case: str) -> dict[str, list[float]]:
    grads, losses = case_tensors(case)
    method = load(option, TASKS).double()
    torch.manual_seed(0)
    direction = method.aggregate(grads, losses)
    return {"weights": method.last_weights.tolist(), "direction": direction.tolist()}


def run_loss(option: str, case: str) -> dict[str, object]:
    _, losses = case_tensors(case)
    method = load(option, TASKS).double()
    for epoch, means in enumerate(DWA_EPOCH_MEANS):
        method.on_epoch_end(epoch, torch.tensor(means, dtype=torch.float64))
    torch.manual_seed(0)
    objective = method.combine(losses)
    return {"weights": method.last_weights.tolist(), "objective": objective.item()}


def assert_pinned(actual: list[float], expected: list[float], what: str) -> None:
    expected_t = torch.tensor(expected, dtype=torch.float64)
    atol = 1e-9 * float(expected_t.abs().max())
    torch.testing.assert_close(
        torch.tensor(actual, dtype=torch.float64), expected_t, rtol=1e-4, atol=atol, msg=what
    )


def test_every_gradient_based_option_and_cheap_loss_based_option_is_pinned_on_every_case():
    expected = {(option, case) for option in gradient_options() for case in CASES}
    assert set(GRADIENT_PINS) == expected, "run `python tests/weighting/test_pinned_values.py --print`"
    assert set(LOSS_PINS) == {(option, case) for option in LOSS_OPTIONS for case in CASES}


@pytest.mark.parametrize(("option", "case"), sorted(GRADIENT_PINS))
def test_gradient_based_methods_reproduce_their_pinned_weights_and_direction(option, case):
    actual = run_gradient(option, case)
    pinned = GRADIENT_PINS[option, case]
    assert_pinned(actual["weights"], pinned["weights"], f"{option} on {case}: last_weights")
    assert_pinned(actual["direction"], pinned["direction"], f"{option} on {case}: direction")


@pytest.mark.parametrize(("option", "case"), sorted(LOSS_PINS))
def test_loss_based_methods_reproduce_their_pinned_weights_and_objective(option, case):
    actual = run_loss(option, case)
    pinned = LOSS_PINS[option, case]
    assert_pinned(actual["weights"], pinned["weights"], f"{option} on {case}: last_weights")
    assert_pinned([actual["objective"]], [pinned["objective"]], f"{option} on {case}: objective")


def pinned(option: str, case: str, field: str) -> torch.Tensor:
    table = GRADIENT_PINS if (option, case) in GRADIENT_PINS else LOSS_PINS
    return torch.tensor(table[option, case][field], dtype=torch.float64)


def test_the_closed_forms_behind_the_notes():
    """Each note of NOTES, recomputed from the maths alone and compared with the pinned number."""

    def close(actual, expected) -> bool:
        return torch.allclose(torch.as_tensor(actual, dtype=torch.float64), expected, rtol=1e-6, atol=1e-12)

    for case in CASES:
        grads, losses = case_tensors(case)
        ones = torch.ones(3, dtype=torch.float64)
        assert close(pinned("equal", case, "weights"), ones) and close(
            pinned("equal", case, "objective"), losses.sum()
        )
        assert close(pinned("static", case, "weights"), ones) and close(
            pinned("static", case, "objective"), losses.sum()
        )
        assert close(pinned("uncertainty", case, "weights"), ones / 2)
        assert close(pinned("uncertainty", case, "objective"), losses.sum() / 2)
        geometric = losses.prod() ** (1 / 3)
        assert close(pinned("gls", case, "objective"), geometric)
        assert close(pinned("gls", case, "weights"), geometric / (3 * losses))
        assert close(pinned("famo", case, "weights"), (1 / losses) / (1 / losses).sum())
        first, second = (torch.tensor(m, dtype=torch.float64) for m in DWA_EPOCH_MEANS)
        dwa = 3 * torch.softmax(second / first / 2, dim=0)
        assert close(pinned("dwa", case, "weights"), dwa) and close(
            pinned("dwa", case, "objective"), dwa @ losses
        )
        assert close(pinned("rlw", case, "weights"), pinned("rlw", "mild", "weights"))
        assert close(pinned("imtl", case, "weights").sum(), torch.tensor(1.0, dtype=torch.float64))
        assert close(pinned("nashmtl", case, "direction").norm(), torch.tensor(1.0, dtype=torch.float64))
        g1, g2 = grads[1], grads[2]
        alpha = (g2 - g1) @ g2 / ((g1 - g2) @ (g1 - g2))
        assert close(pinned("mgda", case, "weights"), torch.stack([alpha * 0, alpha, 1 - alpha]))
        weightings = [option for option, c in GRADIENT_PINS if c == case and option != "graddrop"]
        for option in weightings:  # every direction but GradDrop's is Gᵀ weights
            assert close(grads.T @ pinned(option, case, "weights"), pinned(option, case, "direction")), option
    assert float(pinned("mgda", "mild", "weights")[1]) == pytest.approx(9 / 19)
    cagrad_base = torch.tensor(1 / (3 * 1.16), dtype=torch.float64)
    assert close(pinned("cagrad", "mild", "weights")[0], cagrad_base)
    assert close(pinned("cagrad", "strong", "weights")[1:], cagrad_base.repeat(2))
    grads, _ = case_tensors("mild")
    sq = (grads * grads).sum(1)
    pcgrad = torch.stack([torch.tensor(1.0, dtype=torch.float64), 1 + 0.16 / sq[1], 1 + 0.16 / sq[2]])
    assert close(pinned("pcgrad", "mild", "weights"), pcgrad)
    assert close(pinned("gradvac", "mild", "weights"), pcgrad)
    assert close(pinned("upgrad", "mild", "weights"), pcgrad / 3)


def short(value: float) -> str:
    """Ten significant digits, written as a float literal."""
    return repr(float(f"{value:.10g}"))


def format_table(name: str, rows: dict) -> str:
    lines = [f"{name} = {{"]
    for (option, case), values in rows.items():
        note = NOTES.get((option, case))
        if note:
            lines.append(f"    # {note}")
        lines.append(f'    ("{option}", "{case}"): {{')
        for field, value in values.items():
            if isinstance(value, list):
                lines.append(f'        "{field}": [{", ".join(short(v) for v in value)}],')
            else:
                lines.append(f'        "{field}": {short(value)},')
        lines.append("    },")
    lines.append("}")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:] != ["--print"]:
        sys.exit("usage: python tests/weighting/test_pinned_values.py --print")
    gradient = {(o, c): run_gradient(o, c) for o in gradient_options() for c in CASES}
    loss = {(o, c): run_loss(o, c) for o in LOSS_OPTIONS for c in CASES}
    print(format_table("GRADIENT_PINS: dict[tuple[str, str], dict[str, list[float]]]", gradient))
    print()
    print(format_table("LOSS_PINS: dict[tuple[str, str], dict[str, object]]", loss))
