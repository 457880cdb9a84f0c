"""Study files: schema, validation (one clear line per problem), expansion into trials, identity hash.

A study is data: datasets and gammas, teacher-student pairs, methods with hyperparameters (a
scalar or a list for a grid), seeds, the recipe, resources and the tables to produce. It expands
into teacher trials (one per dataset, gamma, teacher model, seed), Student (CE) trials and
distillation trials; a trial's identity is the hash of everything that decides what it computes.
The modules: schema (the fields), load (the file), rows (grid points and row labels), expand (the
trials), plan (what is left to run).
"""
from orchestrator.study.expand import Trial, config_hash, expand
from orchestrator.study.load import best_file_path, load_study
from orchestrator.study.plan import Plan, make_plan, teacher_logits_line
from orchestrator.study.rows import FROM_SEARCH, full_params, gamma_text, method_rows, row_label
from orchestrator.study.schema import (DELTA_LABEL, PairSpec, RangeSpec, StudySpec, TableSpec, check_param, parse_study,
                                       versus_text)

__all__ = ["DELTA_LABEL", "FROM_SEARCH", "PairSpec", "Plan", "RangeSpec", "StudySpec", "TableSpec", "Trial", "best_file_path",
           "check_param", "config_hash", "expand", "full_params", "gamma_text", "load_study", "make_plan", "method_rows",
           "parse_study", "row_label", "teacher_logits_line", "versus_text"]
