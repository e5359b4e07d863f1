"""Training tools for timm-lm, around timm's own training machinery.

* ``python -m train_wrappers.run SCRIPT.py ...``: runs one of timm's stock scripts (train.py,
  validate.py, benchmark.py, ...) unchanged, after ``import timm_lm`` has put the LM models in timm's
  registry (only train.py can import a module itself, with ``--device-modules timm_lm``);
* ``recipes/``: ``train.py --config`` files for the paper's CIFAR and ImageNet settings.
"""
