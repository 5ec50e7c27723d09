"""Corpus BLEU as an offline `evaluate` module, backed by sacrebleu.

Corpus-level (not an average of sentence scores), scaled 0-100 like sacrebleu reports it.
The evaluate import scanner reads this file line by line: keep one import per line.
"""

import datasets
import evaluate
from sacrebleu.metrics import BLEU

_DESCRIPTION = "Corpus-level BLEU from sacrebleu (score 0-100)."

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): system outputs, one per segment.
    references (list of str, or list of list of str): one reference per segment, or several per segment
        (the number may vary between segments).
    tokenize (str): sacrebleu tokenizer, "13a" by default; use "zh", "ja-mecab", "char", ... for other scripts.
    lowercase (bool): case-insensitive BLEU.
    smooth_method (str): "exp" (default), "floor", "add-k" or "none".
    smooth_value (float): value for "floor" / "add-k" smoothing.
    use_effective_order (bool): drop n-gram orders with no matches (for short corpora).
Returns:
    {"bleu": float}
"""

_CITATION = """@inproceedings{post-2018-call, title = "A Call for Clarity in Reporting {BLEU} Scores",
author = "Post, Matt", booktitle = "Proceedings of the Third Conference on Machine Translation", year = "2018"}"""


def _reference_streams(references) -> list:
    """Transpose per-segment references into sacrebleu's per-reference streams, padding with None."""
    per_segment = [[ref] if isinstance(ref, str) else list(ref) for ref in references]
    n_refs = max((len(refs) for refs in per_segment), default=1)
    return [[refs[i] if i < len(refs) else None for refs in per_segment] for i in range(n_refs)]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Bleu(evaluate.Metric):
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
        tokenize: str | None = None,
        lowercase: bool = False,
        smooth_method: str = "exp",
        smooth_value: float | None = None,
        use_effective_order: bool = False,
    ) -> dict:
        if len(predictions) != len(references):
            raise ValueError(f"Got {len(predictions)} predictions but {len(references)} references.")
        bleu = BLEU(
            lowercase=lowercase,
            tokenize=tokenize,
            smooth_method=smooth_method,
            smooth_value=smooth_value,
            effective_order=use_effective_order,
        )
        score = bleu.corpus_score(list(predictions), _reference_streams(references))
        return {"bleu": float(score.score)}
