"""Corpus chrF (and chrF++) as an offline `evaluate` module, backed by sacrebleu.

Character n-gram F-score, robust for morphologically rich languages; corpus-level, scaled 0-100.
The evaluate import scanner reads this file line by line: keep one import per line.
"""

import datasets
import evaluate
from sacrebleu.metrics import CHRF

_DESCRIPTION = "Corpus-level chrF from sacrebleu (score 0-100); word_order=2 gives chrF++."

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): system outputs, one per segment.
    references (list of str, or list of list of str): one reference per segment, or several per segment
        (the number may vary between segments).
    char_order (int): character n-gram order, 6 by default.
    word_order (int): word n-gram order, 0 by default (chrF); 2 gives chrF++.
    beta (int): recall weight, 2 by default.
    lowercase (bool): case-insensitive chrF.
    whitespace (bool): include whitespace in character n-grams.
    eps_smoothing (bool): use epsilon smoothing (sacrebleu/chrF++.py) instead of the default smoothing.
Returns:
    {"chrf": float}
"""

_CITATION = """@inproceedings{popovic-2015-chrf, title = "chr{F}: character n-gram {F}-score for automatic {MT}
evaluation", author = "Popovi{\\'c}, Maja", booktitle = "Proceedings of the Tenth Workshop on Statistical
Machine Translation", year = "2015"}"""


def _reference_streams(references) -> list:
    """Transpose per-segment references into sacrebleu's per-reference streams, padding with None."""
    per_segment = [[ref] if isinstance(ref, str) else list(ref) for ref in references]
    n_refs = max((len(refs) for refs in per_segment), default=1)
    return [[refs[i] if i < len(refs) else None for refs in per_segment] for i in range(n_refs)]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Chrf(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string"),
                        "references": datasets.Sequence(datasets.Value("string")),
                    }
                ),
                datasets.Features(
                    {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
                ),
            ],
            codebase_urls=["https://github.com/mjpost/sacrebleu"],
        )

    def _compute(
        self,
        predictions,
        references,
        char_order: int = 6,
        word_order: int = 0,
        beta: int = 2,
        lowercase: bool = False,
        whitespace: bool = False,
        eps_smoothing: bool = False,
    ) -> dict:
        if len(predictions) != len(references):
            raise ValueError(f"Got {len(predictions)} predictions but {len(references)} references.")
        chrf = CHRF(
            char_order=char_order,
            word_order=word_order,
            beta=beta,
            lowercase=lowercase,
            whitespace=whitespace,
            eps_smoothing=eps_smoothing,
        )
        score = chrf.corpus_score(list(predictions), _reference_streams(references))
        return {"chrf": float(score.score)}
