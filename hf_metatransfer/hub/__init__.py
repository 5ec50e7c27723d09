"""Publishing to the Hugging Face Hub: model cards from templates, retried pushes, no token ever written.

The repository layout of meta-learned initialisations, adapted models and evaluation episodes is documented in
:mod:`hf_metatransfer.hub.publish`.
"""

from .callbacks import HubCardMixin, ModelCardCallback
from .cards import (
    CardData,
    FineTunedCardData,
    MetaLearnedCardData,
    Result,
    TranslationCardData,
    card_is_as_rendered,
    fine_tuned_card_from_results,
    load_card_data,
    render_card,
    write_card,
)
from .publish import PublishError, adapted_path, is_main_process, push_adapted, push_episodes, push_folder
from .tokens import HubToken, scrub

__all__ = [
    "CardData",
    "FineTunedCardData",
    "HubCardMixin",
    "HubToken",
    "MetaLearnedCardData",
    "ModelCardCallback",
    "PublishError",
    "Result",
    "TranslationCardData",
    "adapted_path",
    "card_is_as_rendered",
    "fine_tuned_card_from_results",
    "is_main_process",
    "load_card_data",
    "push_adapted",
    "push_episodes",
    "push_folder",
    "render_card",
    "scrub",
    "write_card",
]
