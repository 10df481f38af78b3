"""``TrainOptions``: every knob of ``lesion train frcnn``, made from the one declaration in
:data:`deeplesion_cli.spec.frcnn.TRAIN_FRCNN`.

The dataclass's fields, defaults, bounds checks, resume rules and JSON form all come from the
spec, so an option is added by declaring it there. Cross-option rules that a single declaration
cannot express (the learning rate's default depends on the optimizer) live in
:func:`_check_together`. Torch-free.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from deeplesion_cli.spec.core import OptionError
from deeplesion_cli.spec.frcnn import DEFAULT_LR, SELECT_METRICS, TRAIN_FRCNN

__all__ = ["TrainOptions", "OptionError", "DEFAULT_LR", "SELECT_METRICS", "RESUMABLE_OVERRIDES"]

#: Options a resumed run may change; every other option is fixed by the run's first start.
RESUMABLE_OVERRIDES = TRAIN_FRCNN.resumable

_ANNOTATIONS = {"str": "str | None", "int": "int | None", "float": "float | None", "bool": "bool",
                "path": "str | None", "int_list": "tuple[int, ...] | None"}


def _to_json(self) -> dict:
    return TRAIN_FRCNN.record(dataclasses.asdict(self))


@classmethod
def _from_json(cls, d: dict) -> "TrainOptions":
    """Options from args.json or a checkpoint; keys this version does not know are ignored."""
    return cls(**{o.name: o.from_json(d[o.name]) for o in TRAIN_FRCNN if o.name in d})


def _resolved_lr(self) -> float:
    return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]


def _check(self) -> None:
    """:class:`OptionError` naming the option (its flag) for values that cannot work."""
    TRAIN_FRCNN.check(dataclasses.asdict(self))
    _check_together(self)


def _check_together(options) -> None:
    lr = options.resolved_lr()
    if not (lr > 0 and math.isfinite(lr)):
        raise OptionError(f"--lr must be a positive number (got {options.lr})", "lr")


def _post_init(self) -> None:
    if self.lr_steps is not None:
        object.__setattr__(self, "lr_steps", tuple(self.lr_steps))


def _field(default: Any):
    return dataclasses.field(default=default)


TrainOptions = dataclasses.make_dataclass(
    "TrainOptions",
    [(o.name, _ANNOTATIONS.get(o.kind, "Any"), _field(o.default)) for o in TRAIN_FRCNN],
    namespace={"to_json": _to_json, "from_json": _from_json, "resolved_lr": _resolved_lr,
               "check": _check, "__post_init__": _post_init,
               "__doc__": "Every knob of ``lesion train frcnn`` (fields: the options of "
                          ":data:`deeplesion_cli.spec.frcnn.TRAIN_FRCNN`, same names and "
                          "defaults)."},
)
TrainOptions.__module__ = __name__  # pickling and repr find it here
