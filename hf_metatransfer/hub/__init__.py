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
    fine_tuned_card_from_results,
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
    "fine_tuned_card_from_results",
    "is_main_process",
    "push_adapted",
    "push_episodes",
    "push_folder",
    "render_card",
    "scrub",
    "write_card",
]
