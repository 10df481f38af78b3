"""``args.json`` of a darknet training run: what ``lesion train yolo`` ran, with which options.

:func:`~deeplesion_cli.darknet.train.train` writes it (atomically) into the run folder before
darknet starts, and rewrites it on ``--resume``, so that ``lesion report`` reads a darknet run's
architecture and options from here instead of parsing ``darknet.log`` or the cfg. Every key is
always present; a value is null when unknown (docs/formats.md, "Training runs")::

    {"tool": "lesion", "version": "0.1.0", "command": "train yolo", "backend": "darknet",
     "prepared": "/abs/prepared", "cfg": "/abs/run/yolo.cfg", "weights": "/abs/x.conv.11" | null,
     "darknet": {"binary": "/usr/bin/darknet", "fork": "pjreddie" | "alexeyab" | "hankai"},
     "gpus": "0,1" | null, "map": false, "resumed": false,
     "flags": {"clear": false, "map_epochs": 4 | null, "iou_thresh": 0.5 | null,
               "chart": "/abs/chart.png" | null, "save_every": 1000 | null},
     "outputs": {"final": "/abs/run/backup/x_final.weights" | null, "best": ... | null,
                 "resume": ... | null},
     "options": {"arch", "width", "height", "channels", "batch", "subdivisions", "max_batches",
                 "burn_in", "learning_rate", "steps", "scales", "policy", "classes"},
     "net": {"<every [net] key>": "<its value as written in the cfg>"}}

``gpus`` is what darknet got (null when the build has no CUDA and lesion left ``-gpus`` out);
``flags`` the darknet training flags beyond ``-map`` (``-clear``, ``-mAP_epochs``,
``-iou_thresh``, ``-chart``, and ``--save-every``: ``saveweights`` / ``-saveweights``);
``outputs`` the weights files of the run that exist:
``<base>_final.weights``, ``<base>_best.weights`` (AlexeyAB/hank-ai with ``-map``: the best mAP
of the latest session, since both forks restart their best on resume) and what ``--resume``
continues from (``<base>_last.weights``, pjreddie ``<base>.backup``), rewritten by
:func:`record_outputs` when darknet ends, whatever the outcome.

``options`` holds the cfg's ``[net]`` values read as darknet reads them (``width``, ``height``
in pixels; ``batch`` images per iteration; ``max_batches``, ``burn_in``, ``steps`` in
iterations), null where the cfg has no such key; ``arch`` comes from the ``# lesion: <arch>
for ...`` header ``lesion cfg`` writes, else the cfg's file stem; ``classes`` is the class count
of the cfg's last detection layer.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from deeplesion_cli import __version__, atomic
from deeplesion_cli.darknet.cfg import parse_cfg

ARGS_NAME = "args.json"
COMMAND = "train yolo"

#: ``[net]`` keys recorded in ``options`` and how each is read (as darknet's atoi / atof)
_INT_KEYS = ("width", "height", "channels", "batch", "subdivisions", "max_batches", "burn_in")
_ARCH_HEADER = re.compile(r"^#\s*lesion:\s*(\S+)\s+for\b", re.M)


def cfg_options(cfg_path, classes: int | None = None) -> tuple[dict, dict]:
    """(``options``, ``net``) of args.json for the cfg at ``cfg_path`` (see the module
    docstring); ``classes``: the cfg's class count, when the caller already knows it."""
    cfg_path = Path(cfg_path)
    text = cfg_path.read_text(encoding="utf-8", errors="replace")
    cfg = parse_cfg(text, str(cfg_path))
    net = cfg.net
    raw = dict(net.options) if net is not None else {}

    def has(key: str) -> bool:
        return net is not None and key in net.options

    match = _ARCH_HEADER.search(text)
    options: dict = {"arch": match.group(1) if match else cfg_path.stem}
    for key in _INT_KEYS:
        options[key] = net.int(key) if has(key) else None
    options["learning_rate"] = net.float("learning_rate") if has("learning_rate") else None
    options["steps"] = net.ints("steps") if has("steps") else None
    options["scales"] = net.floats("scales") if has("scales") else None
    options["policy"] = net.get("policy") if has("policy") else None
    options["classes"] = classes
    return options, raw


def read_run_args(run_dir) -> dict | None:
    """A darknet run's args.json as a dict; None when it is missing or not a darknet record."""
    try:
        doc = json.loads((Path(run_dir) / ARGS_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("command") == COMMAND else None


#: keys of ``flags`` and ``outputs``
FLAG_KEYS = ("clear", "map_epochs", "iou_thresh", "chart", "save_every")
OUTPUT_KEYS = ("final", "best", "resume")


def _outputs(paths: dict | None) -> dict:
    paths = paths or {}
    return {key: (str(paths[key]) if paths.get(key) is not None and Path(paths[key]).is_file()
                  else None) for key in OUTPUT_KEYS}


def write_run_args(run_dir, *, prepared, cfg_path, weights, binary, fork: str,
                   gpus: str | None, map: bool, resumed: bool,
                   classes: int | None = None, flags: dict | None = None,
                   outputs: dict | None = None) -> dict:
    """Write ``<run_dir>/args.json`` atomically and return it.

    ``cfg_path``: the run's copy of the cfg; ``weights``: the initial weights given, or None.
    On a resume (``resumed``) the run's earlier record keeps its ``weights`` (what the run first
    started from; null if there is no earlier record) and everything a resume may change (the
    cfg, the binary, ``gpus``, ``map``, ``flags``) is rewritten. ``flags``: the values of
    :data:`FLAG_KEYS` (missing ones null, ``clear`` false); ``outputs``: ``{"final", "best",
    "resume"}`` -> weights path (of :func:`~deeplesion_cli.darknet.train.weights_paths`), of
    which those that exist are recorded.
    """
    run_dir = Path(run_dir)
    if resumed:
        previous = read_run_args(run_dir)
        weights = previous.get("weights") if previous is not None else None
    options, net = cfg_options(cfg_path, classes)
    doc = {"tool": "lesion", "version": __version__, "command": COMMAND, "backend": "darknet",
           "prepared": str(Path(prepared).resolve()), "cfg": str(Path(cfg_path).resolve()),
           "weights": None if weights is None else str(weights),
           "darknet": {"binary": str(Path(binary).resolve()), "fork": fork},
           "gpus": gpus, "map": bool(map), "resumed": bool(resumed),
           "flags": {key: (flags or {}).get(key) for key in FLAG_KEYS},
           "outputs": _outputs(outputs), "options": options, "net": net}
    doc["flags"]["clear"] = bool(doc["flags"]["clear"])
    atomic.write_text(run_dir / ARGS_NAME, json.dumps(doc, indent=2) + "\n")
    return doc


def record_outputs(run_dir, paths: dict) -> dict | None:
    """Rewrite ``outputs`` of ``<run_dir>/args.json`` from ``paths`` (the weights files that
    exist now); return the record, or None when the run has no darknet args.json."""
    doc = read_run_args(run_dir)
    if doc is None:
        return None
    doc["outputs"] = _outputs(paths)
    atomic.write_text(Path(run_dir) / ARGS_NAME, json.dumps(doc, indent=2) + "\n")
    return doc
