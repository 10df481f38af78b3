"""A trained network's cfg at another input size, for prediction (``lesion predict yolo --size``).

A study may train at one network size and evaluate the same weights at another (trained at 816,
evaluated at 1024). darknet builds the network from the cfg it is given, so predicting at
another size is predicting with a copy of the training cfg whose ``[net]`` ``width`` and
``height`` say the new size. Nothing else changes:

* ``[yolo] anchors`` are in pixels of the network input and are kept exactly as trained (the
  study changed only width/height; a larger input shows each lesion larger in network pixels, so
  the trained anchors then cover relatively smaller objects);
* every other line is the training cfg's, at the same line number, so a problem reported in the
  resized cfg names the line of the original.

The weights fit any size whose width and height are multiples of 32: a ``[convolutional]``
layer's weights are ``filters x channels x size x size`` whatever the image size, and the
``.weights`` file holds only those (:func:`~deeplesion_cli.darknet.cfg.weights_floats` counts
the same number at every size; :func:`resized_cfg_text` checks it). Layers whose weights depend
on the input size are refused: ``[local]`` (weights per output position), the recurrent
``[rnn]``/``[gru]``/``[lstm]`` (fully connected inside), and a ``[connected]`` whose input
(w x h x c of the layer before it) changes with the size; a ``[connected]`` after a global
``[avgpool]`` sees 1 x 1 x c at every size and is accepted.
"""

from __future__ import annotations

from pathlib import Path

from deeplesion_cli import atomic
from deeplesion_cli.darknet.cfg import check_cfg, errors, layer_shapes, parse_cfg
from deeplesion_cli.darknet.errors import DarknetInputError, DarknetOptionError
from deeplesion_cli.darknet.weights import network_floats

#: layer types whose weights depend on the network input size, and why
SIZE_DEPENDENT = {
    "local": "[local] holds weights for each output position, so its weights depend on the "
             "input size",
    "rnn": "[rnn] is fully connected inside, so its weights depend on the input size",
    "gru": "[gru] is fully connected inside, so its weights depend on the input size",
    "lstm": "[lstm] is fully connected inside, so its weights depend on the input size",
}


def parse_predict_size(size) -> tuple[int, int]:
    """``1024`` or ``"1024"`` -> ``(1024, 1024)``; ``"1024x768"`` -> ``(1024, 768)`` (network
    input width x height, pixels). :class:`DarknetOptionError` naming the size when it does not
    parse or a side is not a positive multiple of 32 (darknet's network input must be)."""
    from deeplesion_cli.anchors import parse_size

    text = str(size).strip()
    try:
        width, height = parse_size(text)
    except ValueError:
        raise DarknetOptionError(f"--size {text!r}: expected N or WxH in pixels, e.g. 1024 or "
                                 "1024x768") from None
    bad = [(side, value) for side, value in (("width", width), ("height", height)) if value % 32]
    if bad:
        said = " and ".join(f"{side} {value}" for side, value in bad)
        near = "; ".join(f"{side} {_multiples_near(value)}" for side, value in bad)
        verb = "is not a multiple" if len(bad) == 1 else "are not multiples"
        raise DarknetOptionError(f"--size {text}: {said} {verb} of 32 (darknet's network "
                                 f"input must be; e.g. {near})")
    return width, height


def _multiples_near(value: int) -> str:
    low = value - value % 32
    return f"{low} or {low + 32}" if low else "32"


def size_text(width: int, height: int) -> str:
    """``1024`` for a square size, else ``1024x768`` (as ``--size`` takes it)."""
    return str(width) if width == height else f"{width}x{height}"


def resized_cfg_text(text: str, size, source: str = "x.cfg") -> str:
    """The cfg ``text`` with ``[net]`` ``width``/``height`` set to ``size`` (N or WxH, pixels)
    and every other line as it is (anchors included), checked: the resized cfg passes
    :func:`~deeplesion_cli.darknet.cfg.check_cfg` (layer shapes included), no layer's weights
    depend on the input size (module docstring), and the weights file of the original fits it
    (same :func:`~deeplesion_cli.darknet.weights.network_floats`).

    Raises :class:`DarknetOptionError` for a bad size and :class:`DarknetInputError` naming the
    size, the file (``source``) and each line for a cfg that cannot be resized.
    """
    width, height = parse_predict_size(size)
    shown = size_text(width, height)
    original = parse_cfg(text, source)
    net = original.net
    if net is None:
        raise DarknetInputError([f"{source}: no [net] section first, so no width/height to set "
                                 f"for --size {shown}"], f"cfg at --size {shown}")
    missing = [key for key in ("width", "height") if key not in net.options]
    if missing:
        raise DarknetInputError([f"{source}:{net.line}: [net] has no {' or '.join(missing)} "
                                 f"to set for --size {shown}"], f"cfg at --size {shown}")
    lines = text.splitlines(keepends=True)
    for key, value in (("width", width), ("height", height)):
        index = net.option_lines[key] - 1
        old = lines[index]
        ending = old[len(old.rstrip("\r\n")):]
        lines[index] = f"{key}={value}{ending}"
    resized_text = "".join(lines)
    resized = parse_cfg(resized_text, source)

    problems = [f"{source}:{p.line}: {p.message}" for p in errors(check_cfg(resized))]
    before = layer_shapes(original)
    after = layer_shapes(resized)
    for i, section in enumerate(resized.layers):
        why = SIZE_DEPENDENT.get(section.type)
        if why is None and section.type == "connected" and i > 0 \
                and before[i - 1][2:] != after[i - 1][2:]:
            old_in, new_in = before[i - 1][2:], after[i - 1][2:]
            why = (f"[connected] takes the layer before it as a vector of w x h x c = "
                   f"{_volume(old_in)} values at the trained size but {_volume(new_in)} at "
                   f"--size {shown}, so its weights do not fit")
        if why is not None:
            problems.append(f"{source}:{section.line}: {why}; predicting at another size "
                            "needs a network of convolutions only")
    if not problems and network_floats(original) != network_floats(resized):
        problems.append(f"{source}: the weights of this network hold {network_floats(original)} "
                        f"values at its own size but {network_floats(resized)} at --size "
                        f"{shown}: its weights depend on the input size")
    if problems:
        raise DarknetInputError(problems, f"cfg at --size {shown} (trained at "
                                f"{size_text(net.int('width'), net.int('height'))})")
    return resized_text


def _volume(shape) -> str:
    return "?" if shape[0] is None else str(shape[0] * shape[1] * shape[2])


def cfg_size(cfg_path) -> tuple[int, int]:
    """The ``[net]`` width x height of the cfg file ``cfg_path`` (0 where absent)."""
    cfg = parse_cfg(Path(cfg_path).read_text(encoding="utf-8", errors="replace"), str(cfg_path))
    net = cfg.net
    return (net.int("width"), net.int("height")) if net is not None else (0, 0)


def resized_cfg_name(cfg_path, size) -> str:
    """``<cfg stem>-<W>x<H>.cfg``: the resized cfg's file name says its size."""
    width, height = parse_predict_size(size)
    return f"{Path(cfg_path).stem}-{width}x{height}.cfg"


def resized_cfg_beside(out_json, cfg_path, size) -> Path:
    """Where ``lesion predict yolo --size`` records the cfg it ran:
    ``<out stem>.<cfg stem>-<W>x<H>.cfg`` beside the detections file ``out_json``."""
    out_json = Path(out_json)
    return out_json.with_name(f"{out_json.stem}.{resized_cfg_name(cfg_path, size)}")


def resized_for_predict(cfg_path, size, out_path) -> Path:
    """Write ``cfg_path`` resized to ``size`` (N or WxH, multiples of 32, pixels) to
    ``out_path`` atomically (:func:`resized_cfg_text`: only ``[net]`` width/height change,
    checked) and return ``out_path``."""
    cfg_path = Path(cfg_path)
    text = cfg_path.read_text(encoding="utf-8", errors="replace")
    resized = resized_cfg_text(text, size, str(cfg_path))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out_path, resized)
    return out_path
