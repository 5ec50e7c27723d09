"""F1 score (macro-averaged by default) as an offline `evaluate` module, backed by scikit-learn.

Macro is the default because few-shot / transfer label sets are often imbalanced and every class
should count equally. The evaluate import scanner reads this file line by line: keep one import per line.
"""

import datasets
import evaluate
from sklearn.metrics import f1_score

_DESCRIPTION = (
    "F1 score, the harmonic mean of precision and recall (scikit-learn f1_score, macro by default)."
)

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted class ids.
    references (list of int): gold class ids.
    average (str or None): "macro" (default), "micro", "weighted", "binary" or None (one score per label).
    labels (list of int): labels to include; defaults to all labels seen in predictions and references.
    pos_label (int): positive class when average="binary".
    sample_weight (list of float): optional per-example weights.
    zero_division: value returned when a class has no predictions and no references (scikit-learn semantics).
Returns:
    {"f1": float}, or {"f1": list of float} when average is None.
"""

_CITATION = """@article{scikit-learn, title={Scikit-learn: Machine Learning in {P}ython},
author={Pedregosa, F. and others}, journal={JMLR}, volume={12}, pages={2825--2830}, year={2011}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class F1(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
            reference_urls=[
                "https://scikit-learn.org/stable/modules/generated/sklearn.metrics.f1_score.html"
            ],
        )

    def _compute(
        self,
        predictions,
        references,
        average: str | None = "macro",
        labels=None,
        pos_label=1,
        sample_weight=None,
        zero_division="warn",
    ) -> dict:
        score = f1_score(
            references,
            predictions,
            labels=labels,
            pos_label=pos_label,
            average=average,
            sample_weight=sample_weight,
            zero_division=zero_division,
        )
        if average is None:  # one score per label
            return {"f1": [float(s) for s in score]}
        return {"f1": float(score)}
