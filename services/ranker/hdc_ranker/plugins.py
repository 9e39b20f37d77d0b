"""The plug-in interface of the ranker: filters (hard requirements) and scorers (soft).

A filter returns, for every candidate at once, which ones it rejects and why; a scorer
returns one raw number per surviving candidate. The engine does the rest (normalisation to
[0,1] across candidates, weights, ordering, explanations), so a plug-in stays a few lines.

Operators add plug-ins without touching the core, either with an entry point

    [project.entry-points."hdc.ranker.plugins"]
    green = "my_pkg.green:GreenEnergyScorer"

or with the `plugins` setting (`HDC_RANKER_PLUGINS='["my_pkg.green:GreenEnergyScorer"]'`).
The reference may name a class (instantiated without arguments), an instance, or a
function returning an instance.
"""

from __future__ import annotations

import importlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from hdc_common.errors import ConfigError

from hdc_ranker.groups import group_rows

if TYPE_CHECKING:
    from hdc_ranker.context import RankContext

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "hdc.ranker.plugins"


@dataclass
class Rejected:
    """Candidates one filter rejects for one reason."""

    mask: np.ndarray  # bool, one per candidate: True = rejected
    code: str  # stable machine code, e.g. "NO_GPU"
    label: str  # short text for the summary line, e.g. "no GPU"
    explain: Callable[[int], str]  # candidate index -> a sentence a person can act on
    # Optional: the sentences of many candidates at once (indices ascending), for speed.
    explain_many: Callable[[np.ndarray], list[str]] | None = None
    # Optional, for speed: per candidate (1-D, or rows of a 2-D array), everything its
    # sentence depends on; or a function giving those keys for the rejected candidates'
    # indices. Candidates with equal keys get the same sentence, so `explain` runs once
    # per distinct key instead of once per candidate.
    key: np.ndarray | Callable[[np.ndarray], np.ndarray] | None = None

    def grouped(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(rejected candidate indices, ascending; the sentence of each, as an index into
        the list of distinct sentences; that list)."""
        idx = np.flatnonzero(self.mask)
        if self.key is not None and idx.size:
            keys = self.key(idx) if callable(self.key) else np.asarray(self.key)[idx]
            first, group = group_rows(keys)
            return idx, group, [self.explain(i) for i in idx[first].tolist()]
        if self.explain_many is not None:
            sentences = self.explain_many(idx)
        else:
            sentences = [self.explain(i) for i in idx.tolist()]
        return idx, np.arange(idx.size), sentences

    def messages(self) -> tuple[np.ndarray, list[str]]:
        """(rejected candidate indices, ascending; their sentences)."""
        idx, group, sentences = self.grouped()
        return idx, [sentences[g] for g in group.tolist()]


class Filter(ABC):
    """A hard requirement. Subclasses set `name` and implement `reject`."""

    name: ClassVar[str] = ""

    @abstractmethod
    def reject(self, ctx: RankContext) -> Iterable[Rejected]: ...


class Scorer(ABC):
    """A soft criterion. Subclasses set `name` and implement `raw`.

    `raw` gets the indices of the candidates that passed every filter and returns one
    float per index; NaN means "no data" and is scored `missing` after normalisation.
    """

    name: ClassVar[str] = ""
    default_weight: ClassVar[float] = 1.0
    higher_is_better: ClassVar[bool] = True
    # Normalised score of a candidate without data: neither the best nor the worst.
    missing: ClassVar[float] = 0.5

    @abstractmethod
    def raw(self, ctx: RankContext, idx: np.ndarray) -> np.ndarray: ...


class Registry:
    """Filters (in rejection-priority order) and scorers, by name."""

    def __init__(self) -> None:
        self.filters: dict[str, Filter] = {}
        self.scorers: dict[str, Scorer] = {}

    def register(self, plugin: Filter | Scorer) -> None:
        if not isinstance(plugin, Filter | Scorer):
            raise ConfigError(
                f"ranker plug-in {plugin!r} is neither a hdc_ranker.plugins.Filter nor a Scorer"
            )
        name = plugin.name
        if not name or not isinstance(name, str):
            raise ConfigError(f"ranker plug-in {type(plugin).__name__} has no name")
        table: dict = self.filters if isinstance(plugin, Filter) else self.scorers
        if name in table:
            kind = "filter" if isinstance(plugin, Filter) else "scorer"
            raise ConfigError(f"ranker {kind} {name!r} is registered twice")
        table[name] = plugin

    def disable(self, names: Iterable[str]) -> None:
        for name in names:
            if name not in self.filters and name not in self.scorers:
                raise ConfigError(f"disabled: unknown filter or scorer {name!r}")
            self.filters.pop(name, None)
            self.scorers.pop(name, None)

    def load_ref(self, ref: str) -> None:
        module, _, attr = ref.partition(":")
        if not attr:
            raise ConfigError(f"plugins: {ref!r} must be 'module:attribute'")
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"plugins: cannot load {ref!r}: {exc}") from None
        self.register(_instantiate(obj, ref))

    def load_entry_points(self) -> None:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                obj = ep.load()
            except Exception as exc:
                raise ConfigError(f"ranker plug-in entry point {ep.name!r}: {exc}") from None
            self.register(_instantiate(obj, ep.value))
            log.info("loaded ranker plug-in", extra={"plugin": ep.name})


def _instantiate(obj: Any, ref: str) -> Any:
    if isinstance(obj, Filter | Scorer):
        return obj
    if callable(obj):
        return obj()
    raise ConfigError(f"plugins: {ref!r} is not a Filter/Scorer class, instance or factory")


def default_registry(
    plugins: Iterable[str] = (), disabled: Iterable[str] = (), entry_points_too: bool = True
) -> Registry:
    """Built-ins, entry-point plug-ins and `plugins` refs, without the `disabled` names.

    Built-ins are disabled before plug-ins load, so a plug-in may take a built-in's name
    to replace it (`disabled: [cost]`, `plugins: [my_pkg:BetterCost]`).
    """
    from hdc_ranker import filters, scorers

    off = set(disabled)
    reg = Registry()
    for f in filters.BUILTIN:
        reg.register(f())
    for s in scorers.BUILTIN:
        reg.register(s())
    known = set(reg.filters) | set(reg.scorers)
    reg.disable(off & known)
    loaded = Registry()
    if entry_points_too:
        loaded.load_entry_points()
    for ref in plugins:
        loaded.load_ref(ref)
    for plugin in [*loaded.filters.values(), *loaded.scorers.values()]:
        if plugin.name not in off or plugin.name in known:
            reg.register(plugin)
    unknown = off - known - set(loaded.filters) - set(loaded.scorers)
    if unknown:
        raise ConfigError(f"disabled: unknown filter or scorer {sorted(unknown)[0]!r}")
    return reg
