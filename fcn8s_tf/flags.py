"""The flags of `python -m fcn8s_tf.train`: one per TrainConfig field, made from the field.

Nothing is defined at import: `train.py` calls `define_flags()` under `__main__`, so importing the
library defines no flag (every CLI of the project works this way). Only `train.main()` reads the
values, through `config_from_flags()`; library functions take a TrainConfig. Named runs live in
`configs/*.flags` and are passed with `--flagfile`.
"""

import dataclasses
import typing

from absl import app
from absl import flags

from fcn8s_tf import config as config_lib

# The flag kind of each field type; a tuple of floats is a comma-separated list ("0.5,1.3").
_DEFINE = {str: flags.DEFINE_string, int: flags.DEFINE_integer, float: flags.DEFINE_float,
           bool: flags.DEFINE_bool}


def _floats(values) -> list:
    return [f"{v:g}" for v in values]


def _field_type(field: dataclasses.Field) -> type:
    """int for `int` and `Optional[int]`; tuple for `Tuple[float, float]`."""
    kind = typing.get_origin(field.type) or field.type
    if kind is typing.Union:  # Optional[X]
        (kind,) = [arg for arg in typing.get_args(field.type) if arg is not type(None)]
    return kind


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines one flag per TrainConfig field in `flag_values` (absl's global FLAGS by default).

    Name, default, help text and bounds all come from the field (config.setting), so a setting is
    described once: `--helpfull` prints what config.py says.
    """
    for field in dataclasses.fields(config_lib.TrainConfig):
        spec = dict(field.metadata)
        help_text = spec.pop("help")
        required = field.default is dataclasses.MISSING
        default = None if required else field.default
        kind = _field_type(field)
        common = dict(flag_values=flag_values, required=required)
        if "choices" in spec:
            flags.DEFINE_enum(field.name, default, list(spec.pop("choices")), help_text,
                              **common)
        elif kind is tuple:
            flags.DEFINE_list(field.name, _floats(default), help_text, **common)
        else:
            _DEFINE[kind](field.name, default, help_text, **spec, **common)


def _pair(flag_values: flags.FlagValues, name: str, what: str):
    values = flag_values[name].value
    try:
        pair = tuple(float(v) for v in values)
    except ValueError:
        raise app.UsageError(f"--{name} must be two numbers {what}; got {','.join(values)}")
    if len(pair) != 2:
        raise app.UsageError(f"--{name} must be two numbers {what}; got {','.join(values)}")
    return pair


def config_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> config_lib.TrainConfig:
    """Reads the training flags into a TrainConfig, rejecting what the flag parser cannot check."""
    scale_range = _pair(flag_values, "scale_range", "min,max")
    if not 0 < scale_range[0] <= scale_range[1]:
        raise app.UsageError(f"--scale_range must be min,max with 0 < min <= max; got "
                             f"{scale_range}")
    skip_scales = _pair(flag_values, "skip_scales", "pool4,pool3")
    if flag_values["train_steps"].value == 0 and flag_values["epochs"].value == 0:
        raise app.UsageError("Set --train_steps or --epochs (both are 0).")
    weights = flag_values["backbone_weights"].value
    if weights is not None and weights.lower() == "none":
        weights = None
    special = {"scale_range": scale_range, "skip_scales": skip_scales, "backbone_weights": weights}
    kwargs = {f.name: special.get(f.name, flag_values[f.name].value)
              for f in dataclasses.fields(config_lib.TrainConfig)}
    kwargs["val_data"] = kwargs["val_data"] or ""
    return config_lib.TrainConfig(**kwargs)


def flags_text(flag_values: flags.FlagValues = flags.FLAGS) -> str:
    """The training flags in --flagfile syntax (absl's own logging flags left out), to replay a
    run."""
    return "".join(flag_values[f.name].serialize() + "\n"
                   for f in dataclasses.fields(config_lib.TrainConfig)
                   if flag_values[f.name].value is not None)
