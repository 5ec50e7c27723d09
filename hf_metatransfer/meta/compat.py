"""transformers under torch.func: the one workaround the batched path needs, attention masks under vmap.

transformers skips building an attention mask when the padding mask is all ones (``padding_mask.all()`` in
``masking_utils._ignore_bidirectional_mask_sdpa`` and ``_ignore_causal_mask_sdpa``), a data-dependent branch
that ``torch.func.vmap`` cannot take, unless ``masking_utils.is_tracing(padding_mask)`` says it is tracing.
That knows dynamo, jit, fx, fake tensors and stream capture, not functorch's wrapped tensors, so while the
batched MAML path (``MetaAlgorithm._vmap_task_gradients``) runs, ``is_tracing`` also answers yes for those:
the mask is then always built, as the per-task loop does for any padded batch.

Checked on transformers 5.24.0 with torch 2.13. ``tests/test_meta_compat.py`` fails if a new transformers
moves ``masking_utils.is_tracing`` or its mask code stops calling it; at run time a missing symbol raises a
RuntimeError, and the algorithms then run those tasks one at a time with a logged warning.

Scope: the patch replaces the module global ``transformers.masking_utils.is_tracing`` while any context is
open, so it is process-global, not per thread. Other threads see a difference only for functorch-wrapped
tensors, that is inside their own torch.func transforms, where they need it too. Contexts opened by several
threads are counted, and the original is restored when the last one closes, whatever the order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import transformers
from transformers import masking_utils

PATCHED = "transformers.masking_utils.is_tracing"
CHECKED_ON = "5.24.0"

_lock = threading.Lock()
_open = 0
_original: Callable[..., bool] | None = None


@contextmanager
def masks_traced_under_functorch() -> Iterator[None]:
    """While open, transformers builds attention masks for functorch-wrapped tensors instead of branching.

    Raises RuntimeError if the installed transformers has no ``masking_utils.is_tracing`` to patch.
    """
    global _open, _original
    with _lock:
        if not _open:
            original = getattr(masking_utils, "is_tracing", None)
            if original is None:
                raise RuntimeError(
                    f"transformers {transformers.__version__} has no {PATCHED} (checked on {CHECKED_ON}): "
                    "update hf_metatransfer/meta/compat.py to patch what its attention-mask code now calls."
                )
            wrapped = torch._C._functorch.is_functorch_wrapped_tensor

            def is_tracing(tensor=None) -> bool:
                return original(tensor) or (isinstance(tensor, torch.Tensor) and wrapped(tensor))

            _original, masking_utils.is_tracing = original, is_tracing
        _open += 1
    try:
        yield
    finally:
        with _lock:
            _open -= 1
            if not _open:
                masking_utils.is_tracing, _original = _original, None
