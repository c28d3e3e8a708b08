"""Every shipped YAML composes, instantiates and documents its keys; config mistakes fail early, naming the key.

Parametrized by globbing conf/, so a new option of any group is covered without editing this file.
"""

import re
import shutil

import hydra
import pytest
import torch
from conftest import (
    CONF,
    build_objects,
    compose_cfg,
    first_batch,
    groups,
    one_data_option_per_class,
    options,
    small_cfg,
)
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf

from mtlrun import schema
from mtlrun.errors import ConfigError
from mtlrun.instantiate import build, check_node
from mtlrun.optim.groups import build_param_groups
from mtlrun.trainer.setup import setup_optimizer, setup_scheduler
from mtlrun.weighting.base import Weighting

CATALOGUE = [(group, option) for group in groups() for option in options(group)]
YAML_FILES = sorted(CONF.rglob("*.yaml"))


def leaves(node: DictConfig, prefix: str = ""):
    """(dotted key, value) for every non-mapping value of ``node``."""
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, DictConfig) and len(value) > 0:
            yield from leaves(value, path + ".")
        else:
            yield path, OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def test_catalogue_lists_the_core_groups():
    # The glob must find the groups the runner needs; an empty catalogue would make every test below vacuous.
    for group in ("data", "architecture", "weighting", "encoder", "optim", "optim/scheduler", "trainer"):
        assert options(group), group
    assert ("experiment", "kendall_toy") in CATALOGUE and ("debug", "smoke") in CATALOGUE


@pytest.mark.parametrize(("group", "option"), CATALOGUE, ids=[f"{g}={o}" for g, o in CATALOGUE])
def test_option_composes_with_its_values(group, option):
    cfg = compose_cfg([f"{group}={option}"])
    path = CONF / group / f"{option}.yaml"
    content = OmegaConf.load(path)
    content.pop("defaults", None)
    content.pop("hydra", None)  # a preset's sweep settings (hydra.sweeper.params) live in Hydra's own node
    if group.startswith("hydra"):
        return  # hydra's own node is not part of the job config
    is_global = "# @package _global_" in path.read_text()
    root = cfg if is_global else OmegaConf.select(cfg, group.replace("/", "."))
    assert root is not None, f"{group}={option} left no node at {group}"
    for key, value in leaves(content):
        composed = OmegaConf.select(root, key)
        composed = OmegaConf.to_container(composed) if OmegaConf.is_config(composed) else composed
        assert composed == value, (
            f"{group}={option}: {key} is {composed!r} after composing, {value!r} in the YAML"
        )


def test_root_config_composes_with_its_values():
    cfg = compose_cfg()
    content = OmegaConf.load(CONF / "config.yaml")
    for key in ("defaults", "hydra"):  # the defaults list and hydra's node are not part of the job config
        content.pop(key)
    for key, value in leaves(content):
        composed = OmegaConf.select(cfg, key)
        composed = OmegaConf.to_container(composed) if OmegaConf.is_config(composed) else composed
        assert composed == value, key


@pytest.mark.parametrize("weighting", options("weighting"))
@pytest.mark.parametrize("data", one_data_option_per_class())
def test_weighting_instantiates_for_every_data_set(data, weighting, data_built, weighting_node):
    """Each method's composed node (independent of the data set) built with each data set's tasks and
    attached to its model: composing once per option, not per pair, is what keeps this cheap."""
    built = data_built(data)
    method = build(weighting_node(weighting), "weighting", tasks=built.tasks)
    method.attach(built.model)
    assert isinstance(method, Weighting)
    assert method.task_names == list(built.cfg.tasks)


@pytest.fixture(scope="module")
def data_built():
    cache = {}

    def built(data):
        if data not in cache:
            cache[data] = build_objects(small_cfg([f"data={data}"]))
        return cache[data]

    return built


@pytest.fixture(scope="module")
def weighting_node():
    cache = {}

    def node(weighting):
        if weighting not in cache:
            cache[weighting] = small_cfg([f"weighting={weighting}"]).weighting
        return cache[weighting]

    return node


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiment_instantiates_end_to_end_setup(experiment):
    cfg = small_cfg([f"experiment={experiment}"])
    built = build_objects(cfg)
    groups_cfg = OmegaConf.to_container(cfg.optim.groups, resolve=True)
    optimizer = setup_optimizer(cfg, build_param_groups(built.model, built.weighting, groups_cfg))
    setup_scheduler(cfg, optimizer, total_steps=10)
    out = built.model(first_batch(built.data))
    assert set(out) == set(built.tasks)


@pytest.mark.parametrize("scheduler", options("optim/scheduler"))
@pytest.mark.parametrize("optim", options("optim"))
def test_optimizer_and_scheduler_build_and_step(optim, scheduler):
    cfg = small_cfg([f"optim={optim}", f"optim/scheduler={scheduler}", "data=kendall_toy"])
    built = build_objects(cfg)
    groups_cfg = OmegaConf.to_container(cfg.optim.groups, resolve=True)
    optimizer = setup_optimizer(cfg, build_param_groups(built.model, built.weighting, groups_cfg))
    assert isinstance(optimizer, torch.optim.Optimizer)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(cfg.optim.optimizer.lr)
    scheduler_obj = setup_scheduler(cfg, optimizer, total_steps=10)
    for _ in range(10):
        optimizer.step()
        scheduler_obj.step()
        lrs = [g["lr"] for g in optimizer.param_groups]
        assert all(0.0 <= lr <= cfg.optim.optimizer.lr * (1 + 1e-9) for lr in lrs), lrs


@pytest.mark.parametrize("encoder", options("encoder"))
def test_encoder_builds_on_image_inputs(encoder):
    cfg = compose_cfg([f"encoder={encoder}"])  # default data: image inputs [1, 10, 10]
    torch.manual_seed(0)
    net = build(cfg.encoder, "encoder", in_shape=(1, 10, 10))
    features = net(torch.rand(5, 1, 10, 10))
    assert features.shape == (5, net.out_dim)


def test_cnn_encoder_rejects_vector_inputs():
    cfg = compose_cfg(["encoder=cnn"])
    with pytest.raises(ConfigError, match="encoder=mlp"):
        build(cfg.encoder, "encoder", in_shape=(1,))


@pytest.mark.parametrize("data", options("data"))
def test_data_config_picks_a_default_encoder(data):
    assert compose_cfg([f"data={data}"]).encoder._target_


# ------------------------------------------------------------------------------------ mistakes fail early


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("trainer.epochs=abc", "trainer.epochs"),
        ("trainer.epoch=3", "trainer.epoch"),
        ("trainer.select=worst", "trainer.select"),
        ("seed=abc", "seed"),
        ("weighting=nope", "nope"),
        ("architecture=nope", "nope"),
    ],
)
def test_compose_rejects_bad_override(override, named):
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg([override])
    assert named in str(err.value)


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("tasks.sum.kind=ordinal", "tasks.sum.kind"),
        ("+tasks.sum.kinds=regression", "tasks.sum.kinds: unknown key"),
        ("+tasks.extra={kind:regression,num_classes:many}", "tasks.extra.num_classes"),
    ],
)
def test_task_mistakes_are_named_before_the_run_starts(override, named):
    """Tasks are plain mappings at compose time (so a task can be added with `+tasks.x={...}`): each is
    checked against TaskConfig before a run claims its folder."""
    cfg = compose_cfg([override])
    with pytest.raises(ConfigError, match=re.escape(named)):
        schema.validate(cfg)


def test_a_task_can_be_added_and_any_task_key_set_from_the_command_line():
    cfg = compose_cfg(["+tasks.twice={kind:regression,target:sum}", "tasks.twice.inputs_from=[left]"])
    schema.validate(cfg)
    assert cfg.tasks.twice == {"kind": "regression", "target": "sum", "inputs_from": ["left"]}


def test_typo_in_a_preset_yaml_fails_at_compose(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "experiment" / "typo.yaml").write_text("# @package _global_\ntrainer:\n  epoch: 3\n")
    schema.register()
    with (
        hydra.initialize_config_dir(config_dir=str(conf), version_base="1.3"),
        pytest.raises(ConfigCompositionException) as err,
    ):
        hydra.compose("config", overrides=["experiment=typo"])
    assert "epoch" in str(err.value.__cause__ or err.value)


def test_check_node_rejects_unknown_data_key():
    cfg = compose_cfg(["data=kendall_toy", "+data.n_trian=5"])
    with pytest.raises(ConfigError, match=r"data\.n_trian") as err:
        check_node(cfg.data, "data")
    assert "n_train" in str(err.value)  # the message lists the valid options


def test_check_node_rejects_wrong_type():
    cfg = compose_cfg(["data=multidigits", "data.offset=1.5"])
    with pytest.raises(ConfigError, match=r"data\.offset") as err:
        check_node(cfg.data, "data")
    assert "int" in str(err.value) and "1.5" in str(err.value)


def test_check_node_rejects_a_run_time_argument_in_the_config():
    cfg = compose_cfg(["+encoder.in_shape=[1,10,10]"])
    with pytest.raises(ConfigError, match=r"encoder\.in_shape: set by mtlrun at run time"):
        build(cfg.encoder, "encoder", in_shape=(1, 10, 10))


def test_check_node_reports_missing_required_option():
    cfg = compose_cfg(["encoder=mlp", "~encoder.hidden"])
    with pytest.raises(ConfigError, match="missing required option.*hidden"):
        check_node(cfg.encoder, "encoder", {"in_shape"})


def test_unimportable_target_is_a_config_error():
    cfg = compose_cfg(["weighting._target_=mtlrun.weighting.nope.Nope"])
    with pytest.raises(ConfigError, match=r"weighting\._target_: cannot import"):
        check_node(cfg.weighting, "weighting")


def test_shipped_data_configs_pass_check_node():
    for data in options("data"):
        cfg = compose_cfg([f"data={data}"])
        check_node(cfg.data, "data")


# ------------------------------------------------------------------------------------ every key is documented

KEY_LINE = re.compile(r"^\s*[A-Za-z_][\w.]*:")


def undocumented_lines(text: str) -> list[str]:
    """Key lines (parent keys and ``_target_`` included) without a ``#`` comment on the same line."""
    bad = []
    block_indent = None  # indent of the key that opened a block scalar (`key: |`); its lines are text
    for number, line in enumerate(text.splitlines(), 1):
        indent = len(line) - len(line.lstrip())
        if block_indent is not None and (not line.strip() or indent > block_indent):
            continue
        block_indent = None
        if not KEY_LINE.match(line):
            continue  # comments, blank lines, `  - item` entries of the defaults list
        code, _, comment = line.partition("#")
        if not comment.strip():
            bad.append(f"{number}: {line}")
        if code.rstrip().endswith(("|", "|-", ">", ">-")):
            block_indent = indent
    return bad


def test_comment_checker_flags_an_undocumented_key():
    text = "parent:  # what\n  documented: 1  # why\n  bare: 2\n_target_: a.B\nnested:\n"
    assert undocumented_lines(text) == ["3:   bare: 2", "4: _target_: a.B", "5: nested:"]
    block = "text: |  # a block\n  usage: not a key\n\n  more: text\nafter: 1\n"
    assert undocumented_lines(block) == ["5: after: 1"]


@pytest.mark.parametrize("path", YAML_FILES, ids=[str(p.relative_to(CONF)) for p in YAML_FILES])
def test_every_key_has_a_comment(path):
    text = path.read_text()
    assert text.startswith("#"), f"{path.relative_to(CONF)}: start with a comment saying what the file is"
    assert undocumented_lines(text) == [], f"{path.relative_to(CONF)}: keys without a comment"
