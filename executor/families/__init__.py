"""The executor's side of each plan family: one module per family, named as on the model side
(roofsim.families.<name>), holding the builder that turns a plan into the cache's per-layer objects, registered
under the family's name. make_cache asks `builder_for(plan.family)`; nothing else branches on the family."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

Builder = Callable[..., list]
"""builder(runtime, plan, model, gpu_spec=...) -> the cache's layers (one PlanLayer per decoder layer)."""

_BUILDERS: dict[str, Builder] = {}
_loaded = False


def register_builder(name: str) -> Callable[[Builder], Builder]:
    """Decorator: register `fn` as the builder of the family `name`."""

    def add(fn: Builder) -> Builder:
        if name in _BUILDERS:
            raise ValueError(f"an executor builder for {name!r} is registered already")
        _BUILDERS[name] = fn
        return fn

    return add


def unregister_builder(name: str) -> None:
    _BUILDERS.pop(name, None)


def builder_for(name: str) -> Builder:
    """The registered builder of a family. The modules of this package (the built-in families) are imported on
    first use: each registers its builder."""
    global _loaded
    if not _loaded:
        for module in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{module.name}")
        _loaded = True
    if name not in _BUILDERS:
        from roofsim.errors import UserError

        raise UserError(
            f"the executor has no builder for plan family {name!r}; it runs {', '.join(_BUILDERS)}"
        )
    return _BUILDERS[name]
