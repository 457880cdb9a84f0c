"""Plain-PyTorch core of ltkd: data, class groups, models, losses, methods and the one-trial loop.

Nothing here imports Ray, MLflow or Optuna: a trial is configured by a typed object and reports
through a callback, so the trainer can be used, tested and benchmarked on its own (also on a GPU
machine that has only PyTorch installed).
"""
