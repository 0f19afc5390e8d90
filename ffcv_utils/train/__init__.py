"""The trainer, in the order a run goes (``train_imagenet.py`` and ``ffcv-train`` call
``run.main``; ``find_lr.py`` and ``ffcv-find-lr`` call ``find_lr.main``):

- ``plan``: what each epoch does: class lists, batch and resolution per epoch, the LR rule.
- ``build``: the one builder of a training set-up (model, optimizer, scaler, loss, batch
  augmentation, EMA, loaders with every ``data.*`` key), shared by the trainer and the LR finder.
- ``steps``: precision, one training step, one epoch, evaluation.
- ``signals``: SIGTERM/SIGINT become a stop at a safe point.
- ``run``: ``main`` and ``run`` in phases: set up, restore, train epochs, finish.
- ``find_lr``: the LR range test, stepping through ``steps.train_step`` on the same set-up.

Around them: ``config`` (the schema of every key) and ``checks`` (what makes sense), ``schedules``
(the LR schedules' table) and ``shrink``, ``models``, ``optim`` (the optimizers' table), ``loss``,
``mixup`` (batch augmentations), ``ema``, ``checkpoint`` (the format a resume reads back),
``runlog``, ``metrics_plot``, ``tracking``, ``telemetry`` and ``lr_finder``.
"""
