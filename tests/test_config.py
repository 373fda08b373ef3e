"""Settings have one source: TrainConfig's defaults, one flag per field, configs that parse.

Flags are defined into private FlagValues here, so nothing touches absl's global FLAGS.
"""

import dataclasses
import inspect
import subprocess
import sys

from absl import app
from absl import flags
import numpy as np
import pytest

from fcn8s_tf import config as config_lib
from fcn8s_tf import flags as flags_lib
from fcn8s_tf import precision as precision_lib
from fcn8s_tf.data import augment
from fcn8s_tf.data import input_pipeline
from fcn8s_tf.model import fcn8s as model_lib
from fcn8s_tf.model import run_dir

from helpers import REPO


def _flag_values(argv=()):
    fv = flags.FlagValues()
    flags_lib.define_flags(fv)
    fv(["train", "--train_data=x-*.tfrecord", "--workdir=w", "--train_steps=1", *argv])
    return fv


def test_every_field_has_a_flag_and_every_flag_a_field():
    fv = flags.FlagValues()
    flags_lib.define_flags(fv)
    fields = {f.name for f in dataclasses.fields(config_lib.TrainConfig)}
    assert set(fv) == fields


def test_each_setting_is_described_once_and_its_flag_says_it():
    fv = flags.FlagValues()
    flags_lib.define_flags(fv)
    for field in dataclasses.fields(config_lib.TrainConfig):
        described = field.metadata.get("help")
        assert described and described.endswith("."), field.name
        assert fv[field.name].help.endswith(described), field.name  # enums prefix "<a|b>: "


def test_flag_defaults_are_the_config_defaults():
    config = flags_lib.config_from_flags(_flag_values())
    default = config_lib.TrainConfig(train_data="x-*.tfrecord", workdir="w", train_steps=1)
    assert config == default


def test_config_defaults_are_the_stages_own():
    """A stage's default (crop size, shuffle buffer, architecture) is not restated anywhere."""
    default = config_lib.TrainConfig(train_data="x", workdir="w")
    builder = inspect.signature(model_lib.build_fcn8s).parameters
    for name, value in default.model_kwargs().items():
        want = builder[name].default
        assert (list(want) if isinstance(want, tuple) else want) == value, name
    assert default.crop_size == augment.DEFAULT_CROP_SIZE[0]
    assert default.scale_range == augment.DEFAULT_SCALE_RANGE
    assert default.flip_prob == augment.DEFAULT_FLIP_PROB
    assert default.base_size == input_pipeline.DEFAULT_BASE_SIZE[0]
    assert default.shuffle_buffer == input_pipeline.DEFAULT_SHUFFLE_BUFFER


def test_config_from_flags_converts_and_rejects():
    config = flags_lib.config_from_flags(_flag_values(
        ["--scale_range=0.75,1.25", "--skip_scales=1,1", "--backbone_weights=none",
         "--precision=mixed_bfloat16"]))
    assert config.scale_range == (0.75, 1.25) and config.skip_scales == (1.0, 1.0)
    assert config.backbone_weights is None and config.precision == "mixed_bfloat16"
    for argv, message in ((["--scale_range=2,1"], "0 < min <= max"),
                          (["--scale_range=a,b"], "two numbers"),
                          (["--skip_scales=1"], "two numbers pool4,pool3"),
                          (["--train_steps=0"], "--train_steps or --epochs")):
        with pytest.raises(app.UsageError, match=message):
            flags_lib.config_from_flags(_flag_values(argv))


@pytest.mark.parametrize("flagfile", sorted(p.name for p in (REPO / "configs").glob("*.flags")))
def test_every_config_parses(flagfile):
    """A typo in voc_fcn8s.flags would otherwise first show on a GPU box."""
    fv = flags.FlagValues()
    flags_lib.define_flags(fv)
    fv(["train", f"--flagfile={REPO / 'configs' / flagfile}", "--train_data=x", "--workdir=w"])
    config = flags_lib.config_from_flags(fv)
    assert config.train_steps or config.epochs
    # The first line says how to run it (STYLE.md habit 2).
    assert (REPO / "configs" / flagfile).read_text().startswith("# ")


def test_flags_text_replays_the_run(tmp_path):
    """What the run writes to <workdir>/flags.txt gives the same config through --flagfile."""
    original = _flag_values(["--fc_units=16", "--skip_scales=1,1", "--backbone_weights=none"])
    flagfile = tmp_path / "flags.txt"
    flagfile.write_text(flags_lib.flags_text(original))
    replayed = flags.FlagValues()
    flags_lib.define_flags(replayed)
    replayed(["train", f"--flagfile={flagfile}"])
    assert flags_lib.config_from_flags(replayed) == flags_lib.config_from_flags(original)


# A run's flags.txt as fcn8s_tf.train wrote it before the stage redesign (flags_text at a9e341e):
# existing workdirs must replay unchanged.
OLD_FLAGS_TXT = """\
--train_data=data/tfrecords/train-*.tfrecord
--workdir=runs/voc
--val_data=
--base_size=321
--crop_size=321
--scale_range=0.5,1.3
--flip_prob=0.5
--shuffle_buffer=1024
--backbone_weights=none
--fc_units=4096
--nolearnable_upsampling
--dropout_rate=0.5
--skip_scales=0.01,0.0001
--train_backbone
--fixed_input_shape
--train_steps=0
--epochs=50.0
--batch_size=20
--learning_rate=0.0001
--lr_schedule=poly
--warmup_steps=0
--weight_decay=0.0
--adam_beta1=0.9
--adam_beta2=0.999
--adam_epsilon=1e-08
--noamsgrad
--precision=mixed_bfloat16
--noxla
--seed=0
--log_every=20
--checkpoint_every=1000
--keep_checkpoints=3
--eval_every=2000
--eval_max_images=0
--tb_images=3
--export
"""


def test_an_old_runs_flags_txt_replays_unchanged(tmp_path):
    flagfile = tmp_path / "flags.txt"
    flagfile.write_text(OLD_FLAGS_TXT)
    replayed = flags.FlagValues()
    flags_lib.define_flags(replayed)
    replayed(["train", f"--flagfile={flagfile}"])
    config = flags_lib.config_from_flags(replayed)
    assert (config.epochs, config.batch_size, config.learning_rate) == (50.0, 20, 1e-4)
    assert (config.lr_schedule, config.precision, config.backbone_weights) == (
        "poly", "mixed_bfloat16", None)
    assert config.skip_scales == (0.01, 0.0001) and config.export and not config.xla
    assert flags_lib.flags_text(replayed) == OLD_FLAGS_TXT  # and writes it back the same


def test_importing_the_library_defines_no_flag():
    code = ("import importlib, pkgutil; from absl import flags; import fcn8s_tf\n"
            "for module in pkgutil.walk_packages(fcn8s_tf.__path__, 'fcn8s_tf.'):\n"
            "    importlib.import_module(module.name)  # every module of the package, CLIs too\n"
            "print(sorted(m for m in flags.FLAGS.flags_by_module_dict() if 'fcn8s' in m))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


# ------------------------------------------------------------------------------- --precision --
@pytest.mark.parametrize("gpus, cpu_flags, policy", [
    ([], {"avx2", "fma"}, "float32"),                              # AMD Zen 3: bf16 emulated
    ([], {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}, "mixed_bfloat16"),  # Sapphire Rapids
    ([], {"avx512f", "avx512_bf16"}, "mixed_bfloat16"),            # Cooper Lake, Zen 4
    ([(8, 0)], {"avx2"}, "mixed_bfloat16"),                        # A100
    ([(9, 0), (9, 0)], set(), "mixed_bfloat16"),                   # H100 x2
    ([(7, 0)], {"amx_bf16"}, "mixed_float16"),                     # V100: the GPU decides
    ([(7, 5)], set(), "mixed_float16"),                            # T4
    ([(6, 1)], set(), "float32"),                                  # P40
    ([(8, 6), (7, 5)], set(), "mixed_float16"),                    # mixed GPUs: the oldest
])
def test_auto_precision_from_device_facts(gpus, cpu_flags, policy):
    chosen, why = precision_lib.choose_precision(gpus, frozenset(cpu_flags))
    assert chosen == policy
    assert why  # logged at start-up


def test_explicit_precision_is_kept():
    assert precision_lib.resolve_precision("mixed_float16")[0] == "mixed_float16"
    # auto on this machine: whatever its facts say, one of the policies.
    assert precision_lib.resolve_precision("auto")[0] in precision_lib.POLICIES


@pytest.mark.parametrize("precision", precision_lib.POLICIES)
def test_one_training_step_under_each_policy(tmp_path, precision):
    """mixed_float16 goes through LossScaleOptimizer, which only this test runs."""
    from fcn8s_tf.training import loop as train_lib
    from test_train import write_records
    config = config_lib.TrainConfig(
        train_data=write_records(tmp_path / "records", "train", 2, 1),
        workdir=str(tmp_path / "run"),
        base_size=16, crop_size=16, num_classes=3, backbone_weights=None, fc_units=8,
        train_steps=1, batch_size=1, learning_rate=1e-2, eval_every=0, export=False,
        train_backbone=False, precision=precision)
    result = train_lib.train(config)
    assert result["step"] == 1 and np.isfinite(result["loss"])
    import keras
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after the run
    model, _ = run_dir.load_model(config.workdir)  # a float32 net from the checkpoint
    moved = model.get_layer("score_fr").get_weights()[0]
    assert np.abs(moved).max() > 0  # the step updated the zero-initialised score layer
