"""Per-call overheads of remote LM calls that matter when thousands of dialogues run at once.

Measured with ``benchmarks/synthesis_scale.py`` (a fake OpenAI-compatible server), parts of DSPy
3.4's call path cost the driver CPU on every call and are pure waste in a synthesis run: the
price look-up (:func:`memoize_model_metadata`), the response cache (:func:`without_response_cache`)
and per-call pydantic adapters (:func:`reuse_type_adapters`). docs/scaling.md has the figures.
"""

from __future__ import annotations

import copy
import functools
import threading
from typing import Any

_patch_lock = threading.Lock()


def memoize_model_metadata() -> bool:
    """Memoize DSPy's model-metadata look-up (prices, capabilities) for the process.

    The table is a static snapshot loaded once, so the answer for a (provider, model,
    namespaces) triple does not change while the process runs. Returns True when the look-up is
    memoized (now or before), False when this DSPy version has no such function.
    """
    with _patch_lock:
        try:
            from dspy.clients import capabilities, costs, model_metadata
        except ImportError:
            return False
        original = getattr(model_metadata, "model_info", None)
        if original is None:
            return False
        if getattr(original, "_csc_memoized", False):
            return True

        @functools.lru_cache(maxsize=1024)
        def cached(provider: Any, model: Any, namespaces: tuple | None) -> dict:
            return original(provider, model, namespaces=namespaces)

        def model_info(provider: Any, model: Any, *, namespaces: Any = None) -> dict:
            key = tuple(namespaces) if namespaces is not None else None
            try:
                # A copy, as the original returns one: callers may edit the dict.
                return copy.deepcopy(cached(provider, model, key))
            except TypeError:  # an unhashable argument: no memo
                return original(provider, model, namespaces=namespaces)

        model_info._csc_memoized = True  # type: ignore[attr-defined]
        model_info.__wrapped__ = original  # type: ignore[attr-defined]
        for module in (model_metadata, costs, capabilities):
            if getattr(module, "model_info", None) is original:
                module.model_info = model_info
        return True


def without_response_cache(lm: Any) -> bool:
    """Turn DSPy's response cache off for ``lm`` (a remote ``dspy.LM``); True when it was on.

    Embedded engines (``local``, ``finetuned``) keep theirs: they have no per-call disk write.
    """
    if getattr(lm, "cache", None) is True and type(lm).__name__ == "LM":
        lm.cache = False
        return True
    return False


def reuse_type_adapters() -> bool:
    """Let DSPy's adapters reuse one pydantic ``TypeAdapter`` per type.

    ``dspy.adapters.utils`` builds a new ``TypeAdapter`` for every field of every call (to
    serialize inputs and to parse outputs), which compiles a pydantic schema each time: about a
    fifth of the driver's CPU per call. An adapter depends only on its type, and using one from
    several threads is safe, so one per type is kept (types that cannot be hashed are built each
    time, as before). Returns True when the adapters are reused (now or before).
    """
    with _patch_lock:
        try:
            from dspy.adapters import utils
        except ImportError:
            return False
        original = getattr(utils, "TypeAdapter", None)
        if original is None:
            return False
        if getattr(original, "_csc_cached", False):
            return True

        @functools.lru_cache(maxsize=512)
        def cached(tp: Any) -> Any:
            return original(tp)

        def type_adapter(tp: Any, *args: Any, **kwargs: Any) -> Any:
            if args or kwargs:
                return original(tp, *args, **kwargs)
            try:
                return cached(tp)
            except TypeError:  # an unhashable type (e.g. a parametrized one holding a list)
                return original(tp)

        type_adapter._csc_cached = True  # type: ignore[attr-defined]
        utils.TypeAdapter = type_adapter
        return True
