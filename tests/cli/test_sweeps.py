"""Sweep machinery, in process (fast tier): launcher and sweeper presets, the Optuna search presets, the
objective a run returns, the `variants` sweeper's job lists, and the one-line message for a missing extra.

The real sweeps (parallel and submitit launchers, Optuna studies) run in tests/cli/test_sweeps_slow.py.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import hydra
import pytest
from conftest import CONF, compose_cfg, options
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf

from mtlrun import cli, plugins, schema
from mtlrun.errors import ConfigError
from mtlrun.objective import build_objective, check_direction, load_baseline

VARIANTS = "hydra_plugins.mtlrun_variant_sweeper.variant_sweeper.VariantSweeper"
PARALLEL = "hydra_plugins.mtlrun_parallel_launcher.parallel_launcher.ParallelLauncher"
# mtlrun's own plugins (shipped in hydra_plugins/): conf file -> class
OWN_PRESETS = {"hydra/sweeper/variants": VARIANTS, "hydra/launcher/parallel": PARALLEL}
# mtlrun's presets of Hydra plugins: conf file -> (plugin module, its config dataclass)
PLUGIN_PRESETS = {
    "hydra/launcher/slurm": ("hydra_plugins.hydra_submitit_launcher.config", "SlurmQueueConf"),
    "hydra/launcher/slurm_local": ("hydra_plugins.hydra_submitit_launcher.config", "LocalQueueConf"),
    "hydra/sweeper/optuna_study": ("hydra_plugins.hydra_optuna_sweeper.config", "OptunaSweeperConf"),
}


# mtlrun's subclasses of the submitit launchers, whose requeued job resumes its own run: preset -> class
RESUMING_LAUNCHERS = {
    f"hydra/launcher/{option}": f"hydra_plugins.mtlrun_submitit_launcher.submitit_launcher.{name}"
    for option, name in (("slurm", "SlurmLauncher"), ("slurm_local", "LocalLauncher"))
}


def plugin_class(name: str) -> type:
    """One of mtlrun's plugin classes as Hydra loaded it: Hydra's plugin scan re-imports the basic sweeper's
    module, so a class imported directly could subclass a stale copy of BasicSweeper."""
    return Plugins.instance().class_name_to_class[name]


def variant_sweeper_class() -> type:
    return plugin_class(VARIANTS)


def compose_with_hydra(overrides: list[str]) -> DictConfig:
    """The root config with Hydra's own node (hydra.launcher, hydra.sweeper), as `mtlrun` composes it."""
    schema.register()
    with hydra.initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra.compose("config", overrides=overrides, return_hydra_config=True)


# ------------------------------------------------------------------------------ presets compose, match plugins


def test_every_sweep_preset_is_tested_here():
    shipped = {f"hydra/{g}/{o}" for g in ("launcher", "sweeper") for o in options(f"hydra/{g}")}
    assert shipped == set(PLUGIN_PRESETS) | set(OWN_PRESETS)
    assert options("hparams_search") == ["lrs", "mixing_lr", "weighting_lr"]


@pytest.mark.parametrize("preset", sorted(PLUGIN_PRESETS))
def test_plugin_preset_composes_without_the_plugin_and_sets_its_target(preset):
    # mtlrun's presets name no plugin config node in a defaults list: they compose whether or not the extra
    # is installed (the fast tier runs without it); only the launch needs the plugin.
    group, option = preset.rsplit("/", 1)
    node = compose_with_hydra([f"{group}={option}"]).hydra[group.split("/")[1]]
    assert node._target_.startswith("hydra_plugins.")
    package = node._target_.split(".")[1]
    assert package == PLUGIN_PRESETS[preset][0].split(".")[1] or node._target_ in RESUMING_LAUNCHERS.values()


@pytest.mark.parametrize("preset", sorted(PLUGIN_PRESETS))
def test_plugin_preset_sets_exactly_the_plugins_keys_with_valid_types(preset):
    module, name = PLUGIN_PRESETS[preset]
    schema_cls = getattr(pytest.importorskip(module), name)  # make test-all installs the extras
    ours = OmegaConf.load(CONF / f"{preset}.yaml")
    theirs = {f.name for f in dataclasses.fields(schema_cls)} - {"defaults"}  # optuna's sampler default list
    assert set(ours) == theirs, f"{preset}: keys differ from {name}"
    sampler = ours.pop("sampler", None)  # Optuna's: typed by the sampler class it names, checked below
    merged = OmegaConf.merge(OmegaConf.structured(schema_cls), ours)  # a wrong type raises here
    assert merged._target_ == ours._target_
    if sampler is not None:
        assert sampler._target_ == "optuna.samplers.TPESampler"
        OmegaConf.merge(OmegaConf.structured(importlib.import_module(module).TPESamplerConfig), sampler)


@pytest.mark.parametrize("preset", sorted(OWN_PRESETS))
def test_own_plugin_preset_sets_exactly_the_parameters_of_its_class(preset):
    # no config dataclass in Hydra's ConfigStore: the class's constructor parameters are the schema (a wrong
    # type or value fails when Hydra instantiates it)
    ours = OmegaConf.load(CONF / f"{preset}.yaml")
    assert ours._target_ == OWN_PRESETS[preset]
    group = preset.split("/")[1]
    assert compose_with_hydra([f"hydra/{group}={preset.rsplit('/', 1)[1]}"]).hydra[group] == ours
    parameters = inspect.signature(plugin_class(OWN_PRESETS[preset])).parameters
    assert set(ours) - {"_target_"} == set(parameters)


def test_variants_sweeper_takes_the_keys_of_its_preset():
    preset = OmegaConf.load(CONF / "hydra" / "sweeper" / "variants.yaml")
    sweeper = hydra.utils.instantiate(preset, _target_=variant_sweeper_class())
    assert sweeper.variants == {} and sweeper.params == {} and sweeper.max_batch_size is None


def test_parallel_launcher_takes_the_keys_of_its_preset():
    preset = OmegaConf.load(CONF / "hydra" / "launcher" / "parallel.yaml")
    launcher = hydra.utils.instantiate(preset, _target_=plugin_class(PARALLEL))
    assert launcher.n_jobs == 2
    assert hydra.utils.instantiate(preset, _target_=plugin_class(PARALLEL), n_jobs=-1).n_jobs >= 1


@pytest.mark.parametrize("search", options("hparams_search"))
def test_hparams_search_preset_picks_optuna_with_a_search_space_and_a_consistent_direction(search):
    cfg = compose_with_hydra([f"hparams_search={search}"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert sweeper.params and all("interval" in str(v) for v in sweeper.params.values())
    assert sweeper.max_failure_rate == 1.0  # a failed trial never stops the study
    assert sweeper.sampler.seed is not None
    job = compose_cfg([f"hparams_search={search}"])
    objective = build_objective(job)
    assert sweeper.direction == objective.direction == "minimize"
    for key in sweeper.params:  # every searched key exists in the job config
        assert OmegaConf.select(job, key, default="missing") != "missing", key


# ------------------------------------------------------------------------------------------------ objective


def fake_summary(val: dict, monitor_value: float | None = 1.25) -> dict:
    return {"status": "completed", "monitor_value": monitor_value, "val": val, "test": val}


def write_run(folder: Path, val: dict, single_task: bool = True, status: str = "completed") -> None:
    """A run folder with only what the baseline reads: summary.json (status, whether its architecture trains
    the tasks independently, data, tasks, val metrics)."""
    folder.mkdir(parents=True)
    summary = {
        "status": status,
        "independent_tasks": single_task,
        "data": {"name": "multidigits"},
        "tasks": {"left": {"kind": "multiclass", "metrics": ["accuracy"]}, "sum": {"metrics": ["mae"]}},
        "val": val,
    }
    (folder / "summary.json").write_text(json.dumps(summary))


def test_monitor_objective_returns_the_selected_validation_value_with_its_direction():
    objective = build_objective(compose_cfg())  # trainer.monitor=loss
    assert objective.direction == "minimize"
    assert objective.value(fake_summary({}, monitor_value=1.25)) == 1.25
    assert math.isnan(objective.value(fake_summary({}, monitor_value=None)))  # no epoch selected: NaN
    accuracy = build_objective(compose_cfg(["trainer.monitor=left/accuracy"]))
    assert accuracy.direction == "maximize"


def test_delta_m_objective_against_a_sweep_of_single_task_runs(tmp_path: Path):
    # Two single-task seeds form the baseline (their mean); a multi-task run and a failed one are ignored.
    write_run(tmp_path / "0", {"left": {"accuracy": 0.8}, "sum": {"mae": 1.0}})
    write_run(tmp_path / "1", {"left": {"accuracy": 0.9}, "sum": {"mae": 1.5}})
    write_run(tmp_path / "2", {"left": {"accuracy": 0.1}, "sum": {"mae": 9.0}}, single_task=False)
    write_run(tmp_path / "3", {"left": {"accuracy": 0.0}, "sum": {"mae": 0.0}}, status="failed")
    assert load_baseline(str(tmp_path)) == pytest.approx({"left/accuracy": 0.85, "sum/mae": 1.25})
    cfg = compose_cfg(
        ["objective.metric=delta_m", f"objective.baseline={tmp_path}", "tasks.right.metrics=[]"]
        + ["tasks.left.metrics=[accuracy]", "tasks.sum.metrics=[mae]"]
    )
    objective = build_objective(cfg)
    assert objective.direction == "minimize"
    run = fake_summary({"left": {"accuracy": 0.935, "loss": 0.3}, "sum": {"mae": 1.0, "loss": 2.0}})
    # accuracy (higher is better): -(0.935 - 0.85) / 0.85 * 100 = -10.0
    # mae (lower is better):       +(1.0 - 1.25) / 1.25 * 100  = -20.0        mean: -15.0 (losses never count)
    assert objective.value(run) == pytest.approx(-15.0)


def test_delta_m_objective_checks_its_baseline_before_training(tmp_path: Path):
    with pytest.raises(ConfigError, match="objective.baseline=<run or sweep folder>"):
        build_objective(compose_cfg(["objective.metric=delta_m"]))
    with pytest.raises(ConfigError, match="no such file"):
        build_objective(compose_cfg(["objective.metric=delta_m", f"objective.baseline={tmp_path / 'nope'}"]))
    write_run(tmp_path / "mt", {"left": {"accuracy": 0.8}, "sum": {"mae": 1.0}}, single_task=False)
    with pytest.raises(ConfigError, match="no completed single-task run"):
        build_objective(compose_cfg(["objective.metric=delta_m", f"objective.baseline={tmp_path}"]))
    write_run(tmp_path / "st", {"left": {"accuracy": 0.8}, "sum": {"mae": 1.0}})
    cfg = compose_cfg(
        ["objective.metric=delta_m", f"objective.baseline={tmp_path}", "tasks.sum.metrics=[rmse]"]
    )
    with pytest.raises(ConfigError, match="sum/mae"):  # the baseline's metric this run does not declare
        build_objective(cfg)
    zero = tmp_path / "zero"
    write_run(zero / "0", {"left": {"accuracy": 0.8}, "sum": {"mae": 0.0}})
    cfg = compose_cfg(["objective.metric=delta_m", f"objective.baseline={zero}", "tasks.right.metrics=[]"])
    with pytest.raises(ConfigError, match="baseline value of sum/mae is 0.0"):  # no relative change from 0
        build_objective(cfg)


def test_objective_metric_is_checked_at_compose_time():
    with pytest.raises(Exception, match="objective.metric"):
        compose_cfg(["objective.metric=accuracy"])


def test_check_direction_rejects_a_study_that_optimises_the_wrong_way():
    objective = build_objective(compose_cfg())  # validation loss: minimize
    check_direction(objective, {"direction": "minimize"})
    check_direction(objective, {"max_batch_size": None})  # the basic sweeper has no direction
    check_direction(objective, {"direction": ["minimize", "maximize"]})  # multi-objective: not checked
    with pytest.raises(ConfigError, match="hydra.sweeper.direction=minimize"):
        check_direction(objective, {"direction": "maximize"})


# ------------------------------------------------------------------------------------ the variants sweeper


def variant_jobs(params: dict, variants: dict, argv: list[str] = (), batch: int | None = None, loader=None):
    sweeper = variant_sweeper_class()(max_batch_size=batch, params=params, variants=variants)
    sweeper.hydra_context = SimpleNamespace(config_loader=loader)
    parser = OverridesParser.create(config_loader=loader)
    overrides = parser.parse_overrides([f"{k}={v}" for k, v in params.items()] + list(argv))
    return sweeper.split_arguments(overrides, batch)


def test_variants_sweeper_runs_each_variant_crossed_with_the_grid():
    variants = {
        "multi_task": {"weighting": "equal,uncertainty"},
        "single_task": {"architecture": "single_task", "weighting": "equal"},
    }
    [jobs] = variant_jobs({"seed": "0,1"}, variants, ["debug=smoke"])
    assert jobs == [
        ["seed=0", "debug=smoke", "weighting=equal"],
        ["seed=0", "debug=smoke", "weighting=uncertainty"],
        ["seed=1", "debug=smoke", "weighting=equal"],
        ["seed=1", "debug=smoke", "weighting=uncertainty"],
        ["seed=0", "debug=smoke", "architecture=single_task", "weighting=equal"],
        ["seed=1", "debug=smoke", "architecture=single_task", "weighting=equal"],
    ]


def test_variants_sweeper_batches_and_drops_duplicate_jobs():
    variants = {"a": {"weighting": "equal,pcgrad"}, "b": {"weighting": "pcgrad,mgda"}}
    batches = variant_jobs({"seed": "0"}, variants, batch=2)
    assert batches == [
        [["seed=0", "weighting=equal"], ["seed=0", "weighting=pcgrad"]],
        [["seed=0", "weighting=mgda"]],
    ]
    # no variants: the basic sweeper's grid
    assert variant_jobs({"seed": "0,1"}, {}) == [[["seed=0"], ["seed=1"]]]


def test_variants_sweeper_rejects_a_key_set_twice():
    with pytest.raises(CompactHydraException, match=r"hydra.sweeper.variants.multi_task.weighting"):
        variant_jobs({"seed": "0"}, {"multi_task": {"weighting": "equal"}}, ["weighting=pcgrad"])
    with pytest.raises(CompactHydraException, match="weighting.weights.y1"):  # + prefixes do not hide a clash
        variant_jobs({"+weighting.weights.y1": "0.5"}, {"w": {"+weighting.weights.y1": "0.1"}})


@pytest.mark.parametrize("experiment", ["compare_weighting", "static_front"])
def test_comparison_presets_run_the_single_task_baseline_once_per_seed(experiment):
    cfg = compose_with_hydra([f"experiment={experiment}"])
    sweeper = cfg.hydra.sweeper
    schema.register()
    with hydra.initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        [jobs] = variant_jobs(dict(sweeper.params), OmegaConf.to_container(sweeper.variants), loader=loader)
    single = [job for job in jobs if "architecture=single_task" in job]
    assert sorted(next(o for o in job if o.startswith("seed=")) for job in single) == [
        "seed=0",
        "seed=1",
        "seed=2",
    ]
    methods = {o for job in jobs if job not in single for o in job if o.startswith("weighting=")}
    if experiment == "compare_weighting":  # every weighting option, each on hard sharing for 3 seeds
        assert methods == {f"weighting={w}" for w in options("weighting")}
        assert len(jobs) == 3 * len(options("weighting")) + 3
    else:  # nine static weightings plus the adaptive methods, 3 seeds each
        statics = [job for job in jobs if "weighting=static" in job]
        assert len(statics) == 9 * 3
        assert {o for job in statics for o in job if o.startswith("+weighting.weights.y1=")} == {
            f"+weighting.weights.y1={w / 10}" for w in range(1, 10)
        }
        assert len(jobs) == 3 * (9 + 6 + 1)


# Designs compared elsewhere: the funnel designs by scripts/feed_transfer_compare.py, `grouped` by a sweep over
# its groups (docs/helping-tasks.md).
COMPARED_ELSEWHERE = {"esmm", "aitm", "grouped"}


def test_the_architecture_presets_compare_every_architecture_with_equal_weighting():
    """compare_architecture (the sharing designs) and learning_to_share (the designs that learn what to share)
    together sweep every architecture option but those compared elsewhere, each with the single-task baseline."""
    compare = compose_with_hydra(["experiment=compare_architecture"])
    share = compose_with_hydra(["experiment=learning_to_share"])
    for cfg in (compare, share):
        assert cfg.weighting._target_.endswith("Equal") and cfg.hydra.sweeper.params.seed == "0,1,2"
    swept = set(compare.hydra.sweeper.params.architecture.split(","))
    variants = share.hydra.sweeper.variants.values()
    learned = {arch for variant in variants for arch in variant.architecture.split(",")}
    assert "single_task" in swept and "single_task" in learned
    assert swept | learned | COMPARED_ELSEWHERE == set(options("architecture"))


# ------------------------------------------------------------------------------------ missing plugin message


def test_chosen_options_reads_group_choices_from_the_command_line():
    argv = [
        "-m",
        "hydra/launcher=parallel",
        "+hparams_search=lrs",
        "seed=0,1",
        "~tasks.sum",
        "experiment=null",
    ]
    assert plugins.chosen_options(argv) == [
        "hydra/launcher=parallel",
        "hparams_search=lrs",
        "seed=0",
        "seed=1",
    ]


def test_missing_plugin_stops_mtlrun_with_one_line_naming_the_extra(monkeypatch, capsys):
    # Point the table at a module that does not exist: the check must catch it before Hydra composes anything.
    missing = "hydra_plugins.mtlrun_no_such_plugin"
    monkeypatch.setitem(plugins.PLUGIN_OF_OPTION, "hydra/launcher=joblib", missing)
    monkeypatch.setitem(plugins.EXTRA_OF_PLUGIN, missing, ("hydra-joblib-launcher", "sweep"))
    monkeypatch.setattr(sys, "argv", ["mtlrun", "-m", "seed=0,1", "hydra/launcher=joblib"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err == (
        "error: hydra/launcher=joblib needs the Hydra plugin hydra-joblib-launcher: pip install 'mtlrun[sweep]'\n"
    )
    # mtlrun's own launcher and sweeper ship with it: no extra
    assert plugins.missing_plugin(["hydra/launcher=parallel", "hydra/sweeper=variants"]) is None
    # every search preset is covered by the table, whatever its name
    monkeypatch.setitem(plugins.PLUGIN_OF_OPTION, "hparams_search", missing)
    assert "mtlrun[sweep]" in plugins.missing_plugin(["hparams_search=lrs"])
    assert plugins.missing_plugin(["hparams_search=null", "seed=1"]) is None


@pytest.mark.parametrize("module", sorted(plugins.EXTRA_OF_PLUGIN))
def test_every_plugin_in_the_table_is_an_extra_of_the_package(module):
    distribution, extra = plugins.EXTRA_OF_PLUGIN[module]
    pyproject = (
        (CONF.parent / "pyproject.toml").read_text() if (CONF.parent / "pyproject.toml").is_file() else ""
    )
    if not pyproject:
        pytest.skip("installed from a wheel: no pyproject.toml beside conf/")
    extras = pyproject.split("[project.optional-dependencies]")[1].split("[project.scripts]")[0]
    block = extras.split(f"{extra} = [")[1].split("]")[0]
    assert f'"{distribution}==' in block


@pytest.mark.parametrize("preset", sorted(RESUMING_LAUNCHERS))
def test_a_requeued_submitit_job_resumes_its_own_folder(preset, tmp_path):
    """submitit requeues a preempted job with what the launcher's checkpoint() returns: the same job, plus
    ``resume=<its folder>`` (replacing one it had), so it continues from the checkpoint mtlrun wrote."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra.core.hydra_config import HydraConfig

    cls = plugin_class(RESUMING_LAUNCHERS[preset])
    assert "BaseSubmititLauncher" in [c.__name__ for c in cls.__mro__]  # (a class of the plugin's scan copy)
    folder = tmp_path / "job 0's"
    cfg = compose_with_hydra([])
    cfg.hydra.runtime.output_dir = str(folder)
    HydraConfig.instance().set_config(cfg)
    delayed = cls(submitit_folder=str(tmp_path)).checkpoint(
        ["seed=1", "resume=old"], "hydra.sweep.dir", 0, "id", {}
    )
    overrides = delayed.args[0]
    assert overrides[:-1] == ["seed=1"]
    parsed = OverridesParser.create().parse_overrides([overrides[-1]])[0]
    assert parsed.key_or_group == "resume" and parsed.value() == str(folder)
    assert delayed.args[1:] == ("hydra.sweep.dir", 0, "id", {})
