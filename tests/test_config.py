import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from vaegan.cli import main
from vaegan.config import (
    Config,
    TrainConfig,
    load_config,
    output_params,
    param,
    parse_override,
    resume_ignored,
)
from vaegan.errors import ConfigError

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def test_params_yaml_matches_defaults() -> None:
    """The committed params.yaml spells out exactly the built-in defaults."""
    assert load_config(REPO_PARAMS) == Config()


def test_override_types_and_values(tmp_path: Path) -> None:
    config = load_config(
        REPO_PARAMS,
        [
            "train.lr=0.01",
            "train.compile=true",
            "model.latent_dim=8",
            "export.parity_batch_sizes=[2, 3]",
            "data.mirrors=[http://x/]",
        ],
    )
    assert config.train.lr == 0.01
    assert config.train.compile is True
    assert config.model.latent_dim == 8
    assert config.export.parity_batch_sizes == (2, 3)
    assert config.data.mirrors == ("http://x/",)


def test_int_is_accepted_for_float() -> None:
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0


def test_exponent_without_dot_is_a_float() -> None:
    """YAML 1.1 reads `1e-4` as a string; a float param still takes it as a number."""
    config = load_config(None, ["train.lr=1e-4", "export.parity_tolerance=5E-6"])
    assert config.train.lr == 1e-4
    assert config.export.parity_tolerance == 5e-6


def test_quick_profile_is_the_embedded_defaults() -> None:
    """`make run` (quick profile) must run exactly what params.yaml says."""
    from pipelines.retrain import profile_overrides

    overrides = [f"{key}={json.dumps(value)}" for key, value in profile_overrides("quick").items()]
    assert load_config(REPO_PARAMS, overrides) == load_config(REPO_PARAMS)


@pytest.mark.parametrize("before", ["long", "full", "smoke"])
def test_a_profile_gives_the_same_params_whichever_ran_before_it(before: str, tmp_path: Path) -> None:
    """Profiles are written into params.yaml: quick after another profile is the embedded defaults
    again, not that profile's learning rate, D pass or data source."""
    from pipelines.retrain import profile_overrides
    from vaegan.dvc_commands import apply_params

    shutil.copy(REPO_PARAMS, tmp_path / "params.yaml")
    assert "train.lr" in apply_params(profile_overrides(before), tmp_path) or before == "smoke"
    apply_params(profile_overrides("quick"), tmp_path)
    assert load_config(tmp_path / "params.yaml") == Config()


@pytest.mark.parametrize("profile", ["quick", "long", "full", "smoke"])
def test_a_profile_scales_every_learning_rate_with_its_batch(profile: str) -> None:
    """Each profile resolves to a valid config, and one that changes the batch scales the learning
    rates linearly with it: batch 256 at batch 64's 3e-4 has barely left the start after 315 steps
    (21.8x the floor against 3.3x at 1.2e-3, docs/training.md)."""
    from pipelines.retrain import profile_overrides

    overrides = [f"{key}={json.dumps(value)}" for key, value in profile_overrides(profile).items()]
    config, base = load_config(REPO_PARAMS, overrides).train, load_config(REPO_PARAMS).train
    scale = config.batch_size / base.batch_size
    assert config.lr == pytest.approx(base.lr * scale)
    assert config.lr_discriminator == pytest.approx(base.lr_discriminator * scale)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr=-0.1", "train.lr: -0.1 is out of range (must be > 0)"),
        ("model.latent_dim=0", "model.latent_dim: 0 is out of range (must be >= 1)"),
        ("model.decoder_blocks=-1", "model.decoder_blocks: -1 is out of range (must be >= 0)"),
        ("model.discriminator_blocks=9", "model.discriminator_blocks: 9 is out of range (must be <= 8)"),
        ("data.dataset=cifar10", "data.dataset: 'cifar10' is not one of 'mnist' | 'fashion-mnist'"),
        ("data.val_fraction=1.5", "data.val_fraction: 1.5 is out of range (must be < 1.0)"),
        ("train.epochs=two", "train.epochs: expected an integer, got 'two'"),
        ("train.compile=1", "train.compile: expected true or false, got 1"),
        ("train.nope=1", "train.nope: unknown key"),
        ("nosection.x=1", "nosection: unknown section"),
        ("train=1", "expected section.key=value"),
        ("train.lr=.inf", "train.lr: expected a finite number, got inf"),
        ("data.download_timeout_s=-.inf", "data.download_timeout_s: expected a finite number, got -inf"),
        ("train.beta=.nan", "train.beta: expected a finite number, got nan"),
        ("train.lr=1e999", "train.lr: expected a finite number, got '1e999'"),
        ("train.lr={a: 1, a: 2}", "duplicate key 'a' on line 1"),
    ],
)
def test_bad_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(
        ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("|", r"\|")
    ):
        load_config(None, [override])


def test_a_test_image_limit_must_leave_k_neighbours() -> None:
    with pytest.raises(
        ConfigError,
        match=r"evaluate.limit_test_images: 3 must be 0 \(every test image\) or larger than "
        r"evaluate.precision_recall_k \(3\)",
    ):
        load_config(None, ["evaluate.limit_test_images=3"])
    assert load_config(None, ["evaluate.limit_test_images=4"]).evaluate.limit_test_images == 4


def test_precision_recall_k_must_be_below_the_sample_count() -> None:
    # Found 55 s into `vaegan evaluate` before; now before any stage runs.
    with pytest.raises(
        ConfigError, match=r"evaluate.precision_recall_k: 50 must be smaller than evaluate.num_samples \(50\)"
    ):
        load_config(None, ["evaluate.num_samples=50", "evaluate.precision_recall_k=50"])
    assert (
        load_config(None, ["evaluate.num_samples=50", "evaluate.precision_recall_k=49"]).evaluate.num_samples
        == 50
    )


def test_inception_needs_weights() -> None:
    with pytest.raises(ConfigError, match="evaluate.inception_weights"):
        load_config(None, ["evaluate.feature_extractor=inception"])


def test_missing_or_bad_params_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    twice = tmp_path / "twice.yaml"
    twice.write_text("train:\n  lr: 0.1\n  lr: 0.2\n")  # PyYAML alone keeps the last silently
    with pytest.raises(ConfigError, match="twice.yaml is not valid YAML: duplicate key 'lr' on line 3"):
        load_config(twice)
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("data:\n  dataset: mnist  # café\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="latin1.yaml is not UTF-8 text"):
        load_config(latin1)


def test_parse_override_yaml_values() -> None:
    assert parse_override("evaluate.inception_weights=null") == (["evaluate", "inception_weights"], None)
    assert parse_override("data.source=/a/b=c") == (["data", "source"], "/a/b=c")


def test_cli_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["params", "--params", str(REPO_PARAMS), "--set", "data.val_fraction=1.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["vaegan params: error: data.val_fraction: 1.5 is out of range (must be < 1.0)"]


def test_params_reference_doc_is_current_and_complete() -> None:
    """docs/params.md's reference is generated from params.yaml and lists every key of the config."""
    import subprocess
    import sys

    tool = REPO_PARAMS.parent / "tools" / "params_doc.py"
    check = subprocess.run([sys.executable, str(tool), "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    doc = (REPO_PARAMS.parent / "docs" / "params.md").read_text()
    missing = [key for key in Config().flat() if f"| `{key}` |" not in doc]
    assert missing == []


# The lists nn/resume.py and reproduce.py kept by hand before they came from the fields' metadata.
HAND_KEPT_RESUME_IGNORED = frozenset(
    {
        "prior", "prior_components", "prior_covariance_floor", "epochs", "max_steps", "device",
        "compile", "cuda_graph", "channels_last", "checkpoint_every", "log_every", "checkpoint_dir",
        "model_path", "metrics_path", "history_path", "resume",
    }
)  # fmt: skip
HAND_KEPT_OUTPUT_PATHS = (
    "data.raw_dir", "data.prepared_dir", "evaluator.path", "evaluator.metrics_path",
    "train.model_path", "train.checkpoint_dir", "train.metrics_path", "train.history_path",
    "evaluate.metrics_path", "evaluate.report_dir", "evaluate.baseline_metrics", "export.dir",
    "export.metrics_path",
)  # fmt: skip


def test_resume_ignored_keys_are_the_hand_kept_list() -> None:
    assert resume_ignored() == HAND_KEPT_RESUME_IGNORED


def test_output_params_are_the_hand_kept_list() -> None:
    derived = output_params()
    assert len(derived) == len(set(derived)) == 13
    assert set(derived) == set(HAND_KEPT_OUTPUT_PATHS)
    assert derived[:2] == ("data.raw_dir", "data.prepared_dir")  # the config's order


def test_a_new_param_follows_its_field_metadata() -> None:
    """Unmarked, a new train.* param is in the resume key and no output; marked, it is left out of
    the key or listed as an output."""
    extended_train = dataclasses.make_dataclass(
        "ExtendedTrain",
        [
            ("new_weight", float, param(0.5, ge=0)),
            ("new_log_dir", str, param("logs", resume=False, output=True)),
        ],
        bases=(TrainConfig,),
        frozen=True,
    )
    extended_config = dataclasses.make_dataclass(
        "ExtendedConfig",
        [("train", extended_train, dataclasses.field(default_factory=extended_train))],
        bases=(Config,),
        frozen=True,
    )
    assert resume_ignored(extended_train) == HAND_KEPT_RESUME_IGNORED | {"new_log_dir"}
    extended_outputs = output_params(extended_config)
    assert set(extended_outputs) == {*output_params(), "train.new_log_dir"} and len(extended_outputs) == 14
    assert extended_config().train.new_weight == 0.5
