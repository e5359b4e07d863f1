"""Training tools for timm-lm, around timm's own training machinery.

* ``python -m train_wrappers.quickstart``: the main job (train, test, publish, reload on Fashion-MNIST);
* ``python -m train_wrappers.trainer``: a compact trainer from timm's library parts (train.py's options
  and output), with an in-memory loader for MNIST-format idx files (``idx_data``);
* ``python -m train_wrappers.run SCRIPT.py ...``: runs one of timm's stock scripts (train.py,
  validate.py, benchmark.py, ...) unchanged, after ``import timm_lm`` has put the LM models in timm's
  registry (only train.py can import a module itself, with ``--device-modules timm_lm``);
* ``python -m train_wrappers.publish``: a checkpoint as a Hub folder with a model card;
* ``recipes/``: ``train.py --config`` files for the paper's CIFAR and ImageNet settings.

Importing this package sets ``OMP_WAIT_POLICY=PASSIVE`` unless it is set already. Torch's OpenMP
threads otherwise spin for a while after every parallel region before they sleep; on a small CPU
machine shared with another busy process the spinning threads hold the cores that the rest of the work
needs: beside other jobs on 2 cores a quickstart training step took 3-3.7 s instead of 0.6 s with
passive waiting (0.3-0.4 s on an idle machine). Alone on a machine it costs 10-40% of the training time
(``benchmarks/omp_wait.py``; see benchmarks/README.md): set ``OMP_WAIT_POLICY`` to keep another policy
(``OMP_WAIT_POLICY=`` for torch's default). libgomp reads the policy
once, when torch loads it, so it is set here: ``python -m train_wrappers.<tool>`` imports this package
before torch. Where torch is already loaded, this changes nothing.
"""
import os
import warnings

os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
# timm 1.0.22 warns about its own use of torch.jit.interface (deprecated by torch 2.14) when it is imported;
# it is not about the user's run and would come before each tool's one-line messages (see timm_lm/__init__.py)
warnings.filterwarnings('ignore', message=r'`torch\.jit\.interface` is deprecated', category=FutureWarning)
