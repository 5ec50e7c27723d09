"""Protocol episodes (all-way, generalized, fixed shots) that cannot be drawn as asked: each refusal names the
problem and the fix."""

from __future__ import annotations

import datasets
import pytest

from hf_metatransfer.episodes import (
    EpisodeBuilder,
    SplitLeakError,
    all_way_episodes,
    fixed_shot_episodes,
    generalized_episodes,
    tasks_from_builder,
)


def examples(per_class: dict[str, int], langs: tuple[str, ...] = ("en", "de")) -> list[dict]:
    return [{"text": f"{label} {lang} {i}", "label": label, "lang": lang}
            for lang in langs for label, n in per_class.items() for i in range(n)]  # fmt: skip


DATA = examples({"alarm": 3, "lights": 8, "music": 8, "timer": 8})
PAIRS = [(f"{label} {i}", label) for label in ("alarm", "lights", "music") for i in range(6)]


def tasks():
    builder = EpisodeBuilder(datasets.Dataset.from_list(DATA), lang_column="lang")
    return tasks_from_builder(builder, class_split={"train": ["alarm", "lights"], "test": ["music", "timer"]},
                              language_split={"train": ["en"], "test": ["de"]})  # fmt: skip


CASES = {  # id: (call, error, phrases of the problem and the fix)
    "class-short-of-K+Q": (lambda: all_way_episodes(DATA, k_shot=2, q_query=2, lang_column="lang",
                                                    on_small_class="error"),
                           ValueError, ["too few examples", "'alarm': '3 examples < K + Q = 4'", "Lower k_shot",
                                        "on_small_class='skip'"]),
    "K-above-smallest-class": (lambda: fixed_shot_episodes(DATA, k_shot=2, lang_column="lang", eval_fraction=0.5),
                               ValueError, ["K = 2 is larger than the smallest class in de", "'alarm': 1",
                                            "Lower k_shot to 1 or less"]),
    "no-classes-left": (lambda: all_way_episodes(PAIRS, k_shot=4, q_query=4),
                        ValueError, ["No all-way episodes", "0 classes of the data left", "Lower k_shot or q_query"]),
    "unknown-language": (lambda: all_way_episodes(DATA, k_shot=1, q_query=1, lang_column="lang", languages=["fr"]),
                         ValueError, ["Unknown languages ['fr']", "['de', 'en']", "Pass some of those"]),
    "language-of-another-split": (lambda: all_way_episodes(tasks(), split="test", k_shot=1, q_query=1,
                                                           languages=["en"]),
                                  SplitLeakError, ["['en'] are not languages of split 'test'", "pick languages"]),
    "languages-without-a-language-column": (lambda: all_way_episodes(PAIRS, k_shot=1, q_query=1, languages=["en"]),
                                            ValueError, ["no language column", "lang_column=..."]),
    "one-language-as-a-string": (lambda: all_way_episodes(DATA, k_shot=1, q_query=1, lang_column="lang",
                                                          languages="en"),
                                 ValueError, ["is one string", "languages=['en']"]),
    "same-support-and-query-language": (lambda: fixed_shot_episodes(DATA, k_shot=1, lang_column="lang",
                                                                    support_languages=["en"], query_languages=["en"]),
                                        ValueError, ["support language different", "query_languages=[...]"]),
    "draws-below-1": (lambda: all_way_episodes(PAIRS, k_shot=1, q_query=1, draws=0),
                      ValueError, ["draws=0 is below 1", "pass draws=1 or more"]),
    "fixed-shot-draws-below-1": (lambda: fixed_shot_episodes(PAIRS, k_shot=1, draws=-2),
                                 ValueError, ["draws=-2 is below 1", "pass draws=1 or more"]),
    "k-not-an-int": (lambda: all_way_episodes(PAIRS, k_shot=2.0, q_query=1), ValueError, ["k_shot=2.0", "an int"]),
    "collection-without-split": (lambda: all_way_episodes(tasks(), k_shot=1, q_query=1),
                                 ValueError, ["several class splits", "split='test'"]),
    "unknown-split": (lambda: all_way_episodes(tasks(), split="dev", k_shot=1, q_query=1),
                      ValueError, ["Unknown split 'dev'"]),
    "not-labelled-examples": (lambda: all_way_episodes("train.csv", k_shot=1, q_query=1),
                              ValueError, ["Cannot read labelled examples from str", "a list of"]),
    "generalized-without-test-classes": (lambda: generalized_episodes(PAIRS, k_shot=1, q_query=1),
                                         ValueError, ["need the test classes", "classes=[...]"]),
    "generalized-class-on-both-sides": (lambda: generalized_episodes(PAIRS, classes=["music"], seen_classes=["music"],
                                                                     k_shot=1, q_query=1),
                                        SplitLeakError, ["['music'] are both test and seen", "one side"]),
    "generalized-seen-classes-of-a-collection": (lambda: generalized_episodes(tasks(), split="test", k_shot=1,
                                                                              q_query=1, seen_classes=["alarm"]),
                                                 ValueError, ["not seen_classes", "seen_split=..."]),
    "generalized-queries-from": (lambda: generalized_episodes(PAIRS, classes=["music"], k_shot=1, q_query=1,
                                                              queries_from="seen"),
                                 ValueError, ["queries_from='seen'", "'test'", "'both'"]),
    "generalized-more-seen-than-there-are": (lambda: generalized_episodes(PAIRS, classes=["music"], k_shot=1,
                                                                          q_query=1, n_seen=5),
                                             ValueError, ["need 5 seen classes", "2 have them", "Lower n_seen"]),
    "evaluation-label-without-train-examples": (lambda: fixed_shot_episodes(PAIRS, [("a song", "podcast")],
                                                                            k_shot=1),
                                                ValueError, ["['podcast'] have evaluation examples",
                                                             "no train examples", "Add train examples"]),
    "eval-fraction-outside-0-1": (lambda: fixed_shot_episodes(PAIRS, k_shot=1, eval_fraction=1.0),
                                  ValueError, ["eval_fraction=1.0", "between 0 and 1"]),
    "small-class-option": (lambda: all_way_episodes(PAIRS, k_shot=1, q_query=1, on_small_class="drop"),
                           ValueError, ["on_small_class='drop'", "'skip'", "'error'"]),
    "no-tokenizing-token-ids": (lambda: all_way_episodes(EpisodeBuilder(datasets.Dataset.from_list(
                                    [{"input_ids": [1, i], "label": i % 2} for i in range(8)]), text_column=None),
                                    k_shot=1, q_query=1).tokenized(None),
                                ValueError, ["without a text column", "EpisodeCollator(TokenStore"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_protocol_refusals_name_the_problem_and_the_fix(refused, case):
    call, error, phrases = CASES[case]
    with refused(error, *phrases):
        call()
