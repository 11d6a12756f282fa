"""The repo's own Lightning callbacks and plugins: the only code that touches Lightning's internals.

``configs/callbacks/default.yaml`` instantiates them (with Lightning's ModelCheckpoint, EarlyStopping and
LearningRateMonitor, and :mod:`cola.analysis`'s LambdaLogger and InterferenceProbe); nothing is imported here, so
``cola.callbacks.slurm`` stays importable before Lightning is:

- :mod:`cola.callbacks.resume`: exact resumption (``ResumeState``) and ``last.ckpt`` on SIGTERM (``SaveOnSigterm``);
- :mod:`cola.callbacks.slurm`: SIGUSR1 save + requeue of SLURM batch jobs, their checkpoints;
- :mod:`cola.callbacks.nonfinite`: NaN/inf losses and gradients (``NonFiniteGuard``);
- :mod:`cola.callbacks.checkpoints`: atomic ``*.ckpt`` writes (``AtomicCheckpointIO``);
- :mod:`cola.callbacks.loggers`: the W&B logger that keeps its run id in the run folder;
- :mod:`cola.callbacks.progress`: the step reached, for the run's ``job.json`` (``JobProgress``).
"""
