"""The layer map: embeddings, transformer blocks in depth order, and head, for any Hub model.

Every strategy of the library (layer-wise LR, freezing, surgical selection, re-initialisation, fast weights of
meta-learning) is a policy over this one map, so each strategy never walks ``named_parameters()`` on its own.

Depth order: ``embeddings`` (depth 0), then the blocks (depth 1..L), then ``head`` (depth L + 1). For
encoder-decoder models the encoder's blocks come first, then the decoder's (T5: ``encoder.block.*`` then
``decoder.block.*``). Parameters of the backbone that sit outside every block are placed by registration order:
before the first block, or owned by an embedding module, they belong to the embeddings; after a block, to that
block (BERT's pooler and Llama's final norm join the top block; T5's encoder final norm joins the last encoder
block). The head is everything task-specific: the parameters outside ``model.base_model_prefix``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from torch import nn

EMBEDDINGS = "embeddings"
BLOCK = "block"
HEAD = "head"

_BLOCK_COUNT_KEYS = (
    "num_hidden_layers",
    "num_layers",
    "num_decoder_layers",
    "encoder_layers",
    "decoder_layers",
    "n_layer",
    "n_layers",
)

#: A user's own mapping as a callable: parameter name -> ("embeddings", None) | ("block", index) | ("head", None).
ParamClassifier = Callable[[str], tuple[str, int | None]]


@dataclass(frozen=True)
class LayerGroup:
    """One depth level of a model: its parameters by name (names as ``model.named_parameters()`` gives them)."""

    name: str
    kind: str
    depth: int
    param_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.param_names)


@dataclass(frozen=True)
class LayerMapSpec:
    """A mapping of one's own, for architectures the automatic map cannot read.

    ``blocks`` is a regex whose first group captures the block index (for example
    ``r"encoder\\.layers\\.(\\d+)\\."``); ``head`` a regex for head parameters; what matches neither is embeddings.
    """

    blocks: str
    head: str | None = None

    def classify(self, name: str) -> tuple[str, int | None]:
        m = re.search(self.blocks, name)
        if m:
            return BLOCK, int(m.group(1))
        if self.head is not None and re.search(self.head, name):
            return HEAD, None
        return EMBEDDINGS, None


class LayerMapError(ValueError):
    """The layers of a model could not be found."""


@dataclass
class LayerMap:
    """Depth map of a model: ``groups[0]`` is the embeddings, then each block, and ``groups[-1]`` is the head."""

    groups: list[LayerGroup]
    model_class: str
    _depth_of: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._depth_of = {n: g.depth for g in self.groups for n in g.param_names}

    @property
    def embeddings(self) -> LayerGroup:
        return self.groups[0]

    @property
    def blocks(self) -> list[LayerGroup]:
        return self.groups[1:-1]

    @property
    def head(self) -> LayerGroup:
        return self.groups[-1]

    @property
    def num_blocks(self) -> int:
        return len(self.groups) - 2

    @property
    def top_depth(self) -> int:
        """Depth of the head: the distance from the top of a group is ``top_depth - group.depth``."""
        return self.num_blocks + 1

    def depth(self, param_name: str) -> int:
        return self._depth_of[param_name]

    def __iter__(self) -> Iterator[LayerGroup]:
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def resolve_blocks(self, selection: str | int | Iterable[int]) -> list[int]:
        """Block indices (0-based, depth order) for ``"first"``, ``"middle"``, ``"last"``, an int or a list.

        Negative indices count from the top, as in Python.
        """
        n = self.num_blocks
        if isinstance(selection, str):
            named = {"first": [0], "middle": [(n - 1) // 2], "last": [n - 1], "all": list(range(n))}
            if selection not in named:
                raise ValueError(
                    f"Unknown block selection {selection!r}: use 'first', 'middle', 'last', 'all', "
                    "a block index or a list of indices."
                )
            return named[selection]
        indices = [selection] if isinstance(selection, int) else list(selection)
        out = []
        for i in indices:
            if not -n <= i < n:
                raise ValueError(
                    f"Block index {i} is out of range: {self.model_class} has {n} blocks "
                    f"(indices 0..{n - 1}, or -{n}..-1 from the top)."
                )
            out.append(i % n)
        return sorted(set(out))


def unwrap_model(model: nn.Module) -> nn.Module:
    """The transformers model under DDP/accelerate wrappers and a PEFT wrapper."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    get_base = getattr(model, "get_base_model", None)
    if callable(get_base):
        model = get_base()
    return model


def _block_counts(model: nn.Module) -> set[int]:
    config = getattr(model, "config", None)
    if config is None:
        return set()
    configs = [config]
    get_text = getattr(config, "get_text_config", None)
    if callable(get_text):
        configs.append(get_text())
    counts = set()
    for cfg in configs:
        for key in _BLOCK_COUNT_KEYS:
            value = getattr(cfg, key, None)
            if isinstance(value, int) and value > 0:
                counts.add(value)
    return counts


def _find_stacks(backbone: nn.Module, counts: set[int]) -> list[nn.ModuleList]:
    """The outermost ``nn.ModuleList``s of same-class, parametrised modules whose length is a configured depth."""
    stacks: list[tuple[str, nn.ModuleList]] = []
    for name, module in backbone.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) not in counts:
            continue
        if len({type(m) for m in module}) != 1 or not any(True for _ in module.parameters()):
            continue
        if any(name.startswith(outer + ".") for outer, _ in stacks):
            continue
        stacks.append((name, module))
    return [m for _, m in stacks]


def _backbone(inner: nn.Module) -> tuple[nn.Module, bool]:
    """The module under ``base_model_prefix``, and whether there is one (T5ForConditionalGeneration and bare base
    models are their own backbone)."""
    prefix = getattr(inner, "base_model_prefix", "") or ""
    backbone = getattr(inner, prefix, None) if prefix else None
    if isinstance(backbone, nn.Module):
        return backbone, True
    return inner, False


def block_stacks(model: nn.Module) -> list[nn.ModuleList]:
    """The ``nn.ModuleList``s holding the transformer blocks, in depth order (one for encoders and decoders; the
    encoder's then the decoder's for encoder-decoder models): the modules behind the layer map's blocks."""
    inner = unwrap_model(model)
    stacks = _find_stacks(_backbone(inner)[0], _block_counts(inner))
    if not stacks:
        raise _unmappable(
            inner,
            f"no nn.ModuleList of same-class blocks whose length matches the config's depth "
            f"({sorted(_block_counts(inner)) or 'no depth in config'}) was found",
        )
    return stacks


def _unmappable(model: nn.Module, why: str) -> LayerMapError:
    cls = type(model).__name__
    return LayerMapError(
        f"Cannot map the layers of {cls}: {why}. Pass a mapping of your own, e.g. "
        f"build_layer_map(model, spec=LayerMapSpec(blocks=r'layers\\.(\\d+)\\.', head=r'^classifier')) "
        "or spec=callable(param_name) -> ('embeddings'|'block'|'head', block_index_or_None)."
    )


def build_layer_map(model: nn.Module, spec: LayerMapSpec | ParamClassifier | None = None) -> LayerMap:
    """Map every trainable-or-not parameter of ``model`` (names as ``model.named_parameters()`` gives them).

    Works on any transformers model and on a ``PeftModel`` wrapping one: PEFT's LoRA matrices join the block they
    adapt, ``modules_to_save`` copies of the head stay in the head.
    """
    named = list(model.named_parameters())
    if spec is not None:
        classify = spec.classify if isinstance(spec, LayerMapSpec) else spec
        return _map_from_classifier(model, named, classify)

    inner = unwrap_model(model)
    backbone, has_prefix_module = _backbone(inner)
    stacks = block_stacks(model)

    block_of: dict[int, int] = {}
    index = 0
    for stack in stacks:
        for block in stack:
            for p in block.parameters():
                block_of.setdefault(id(p), index)
            index += 1
    num_blocks = index

    head_ids: set[int] = set()
    if has_prefix_module:
        backbone_ids = {id(p) for p in backbone.parameters()}
        head_ids = {id(p) for p in inner.parameters() if id(p) not in backbone_ids}
    else:
        # Top-level children registered after the last child that holds blocks are the head (T5's lm_head).
        children = list(inner.children())
        stack_ids = {id(p) for s in stacks for p in s.parameters()}
        last = max(i for i, c in enumerate(children) if any(id(p) in stack_ids for p in c.parameters()))
        earlier = {id(p) for c in children[: last + 1] for p in c.parameters()}
        head_ids = {id(p) for c in children[last + 1 :] for p in c.parameters()} - earlier  # tied lm_head

    embedding_ids = {
        id(p)
        for mod_name, mod in inner.named_modules()
        if isinstance(mod, nn.Embedding) or "embed" in mod_name.rsplit(".", 1)[-1].lower()
        for p in mod.parameters()
    }

    # Depth of each inner parameter, by registration order relative to the blocks.
    depth_of_id: dict[int, int] = {}
    current = None
    for p in inner.parameters():
        pid = id(p)
        if pid in block_of:
            current = block_of[pid]
            depth_of_id[pid] = current + 1
        elif pid in head_ids:
            depth_of_id[pid] = num_blocks + 1
        elif pid in embedding_ids or current is None:
            depth_of_id[pid] = 0
        else:
            depth_of_id[pid] = current + 1

    # Names as the outer model (PEFT, DDP) gives them. PEFT injects LoRA matrices and modules_to_save copies into
    # the inner model, so they are placed above; parameters outside it (prompt-tuning encoders) feed the input.
    names_by_depth: dict[int, list[str]] = {d: [] for d in range(num_blocks + 2)}
    for name, p in named:
        names_by_depth[depth_of_id.get(id(p), 0)].append(name)
    return _assemble(names_by_depth, num_blocks, type(inner).__name__)


def _map_from_classifier(
    model: nn.Module, named: list[tuple[str, nn.Parameter]], classify: ParamClassifier
) -> LayerMap:
    kinds = {name: classify(name) for name, _ in named}
    indices = sorted({i for kind, i in kinds.values() if kind == BLOCK and i is not None})
    if not indices:
        raise _unmappable(unwrap_model(model), "the mapping given matched no block parameter")
    position = {i: k for k, i in enumerate(indices)}
    names_by_depth: dict[int, list[str]] = {d: [] for d in range(len(indices) + 2)}
    for name, (kind, i) in kinds.items():
        if kind == BLOCK:
            names_by_depth[position[i] + 1].append(name)
        elif kind == HEAD:
            names_by_depth[len(indices) + 1].append(name)
        elif kind == EMBEDDINGS:
            names_by_depth[0].append(name)
        else:
            raise ValueError(
                f"Mapping returned unknown kind {kind!r} for {name!r}: use 'embeddings', 'block' or 'head'."
            )
    return _assemble(names_by_depth, len(indices), type(unwrap_model(model)).__name__)


def _assemble(names_by_depth: dict[int, list[str]], num_blocks: int, model_class: str) -> LayerMap:
    groups = [LayerGroup(EMBEDDINGS, EMBEDDINGS, 0, tuple(names_by_depth[0]))]
    groups += [
        LayerGroup(f"block.{i}", BLOCK, i + 1, tuple(names_by_depth[i + 1])) for i in range(num_blocks)
    ]
    groups.append(LayerGroup(HEAD, HEAD, num_blocks + 1, tuple(names_by_depth[num_blocks + 1])))
    return LayerMap(groups=groups, model_class=model_class)
