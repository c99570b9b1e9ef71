"""`foldwise ablate`: what each feature group is worth, as one Ray DAG with paired per-fold statistics.

The DAG reads top to bottom in `nodes.run_dag`: the very nodes of `foldwise run` (prepare
once, plan folds once, one `train_fold` per variant x model x fold, all submitted at
once; pipeline.dag.submit_folds / collect_folds), where a variant is the baseline or the baseline
without one feature group. The baseline's folds have exactly `foldwise run`'s cache
keys, so a baseline an earlier run computed is read from the cache, not refitted.
Then, per variant, the spec's ensemble on OOF (pipeline.dag.ensemble_node); permutation importance
on the baseline's fitted fold models (re-predicts only); and the paired statistics of
tasks.ablation. Only the driver writes to MLflow: a parent run and one child per variant.
"""

from foldwise.workflows.commands.ablate.command import run_ablation
from foldwise.workflows.commands.ablate.plan import AblationPlan, Variant, plan_variants
from foldwise.workflows.commands.ablate.report import AblationResult

__all__ = ["AblationPlan", "AblationResult", "Variant", "plan_variants", "run_ablation"]
