"""Search: Optuna proposes a distillation method's hyperparameters, Ray Tune runs
the trials (ASHA stops the weak ones early), MLflow tracks them nested under one parent run per search.

A study's `search:` block (`orchestrator.study.SearchSpec`) names the method, the space, the budget per
(teacher-student pair, γ), the validation metric, Optuna's sampler and the pruner. Each (pair, γ) is one
search: one Optuna study (ask/tell, kept in an Optuna storage beside the tracking store) and one Tune
run. A search trial holds a balanced validation split out of the training set before the long-tailed
cut (`TrialConfig.validation_per_class`) and evaluates on it only: it reports `val_acc_*`, never reads
the test set, and nothing here reads or prints a test metric. Teachers are the study's own teacher
trials (trained by the sweep first when missing), so the grid trials of the same study share them.

Resume: a search stopped midway (Ctrl-C, a lost driver) leaves its unfinished Optuna trials RUNNING;
the next `ltkd search` hands those out again first, with the same number and point, so they continue
from their saved state and their MLflow runs, and asks Optuna for new points only up to the budget.
Finished, pruned and failed trials count toward the budget and are never run again: a search whose
budget is spent does nothing.

The modules: space (what is searched), optuna_adapter (the only Optuna importer's side), tune (the Tune
classes), parents (the MLflow parent runs), driver (one Tune run over a study's searches).
"""
