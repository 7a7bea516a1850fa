"""Training, validation and prediction of a job's model (``twinhpc train | validate | predict``).

::

    from twinhpc.train import train, validate, predict
    result = train(job, out="runs/digits", resume=True)        # collective; RUN/results.h5, RUN/ckpt
    report = validate(job, run="runs/digits")                   # collective; the report dict
    predict(job, run="runs/digits", dataset="data/new", out="pred.h5")

Modules: :mod:`.loop` (the loop), :mod:`.run` (a run's state and the work between its steps),
:mod:`.model` (the job's model, its structure checked against the data), :mod:`.optim`
(optimizers, schedules, clipping), :mod:`.losses` (losses and metrics), :mod:`.metrics` (the
classification and regression reports, numpy only), :mod:`.evaluate` (distributed evaluation),
:mod:`.predict` (distributed inference and validation of a checkpoint), :mod:`.signals`
(SIGUSR2/SIGTERM → checkpoint → requeue), :mod:`.device`. ``docs/training.md`` is the
user-facing description.
"""

from .loop import train
from .predict import predict, validate
from .run import NonFiniteLoss, TrainResult
from .signals import REQUEUE_EXIT_STATUS

__all__ = ["NonFiniteLoss", "REQUEUE_EXIT_STATUS", "TrainResult", "predict", "train", "validate"]
