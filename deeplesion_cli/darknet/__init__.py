"""darknet (pjreddie, AlexeyAB, hank-ai) support.

* :mod:`.cfg`: parse, write back, size (layer shapes) and check ``.cfg`` files, with line numbers.
* :mod:`.generate`: training cfgs for yolov4, yolov4-tiny, yolov3 and yolov3-tiny from the
  templates in ``darknet_cfg/``.
* :mod:`.binary` (finding darknet, its fork), :mod:`.inputs` (checks before launching),
  :mod:`.process` (the child process), :mod:`.log` (reading its console), :mod:`.train`,
  :mod:`.runargs` (a run's ``args.json``), :mod:`.predict` (with :mod:`.resize`: at another
  network size), :mod:`.map` (darknet's own ``detector map``), :mod:`.errors`: running darknet.
"""
