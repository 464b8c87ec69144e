"""One source of truth for LM usage: every call of a metered LM is counted, whatever thread made it.

Why not ``dspy.track_usage()``: DSPy's ``ParallelExecutor`` (used by ``dspy.Evaluate``, the
optimizers, ``Module.batch`` and the csc runners) gives every worker thread a *deep copy* of the
active usage tracker and never merges it back, so usage recorded on worker threads is lost.

:class:`UsageMeter` is a DSPy callback attached to the LM object itself (``lm.callbacks``, which
``lm.copy()`` keeps), so it sees every call of that LM from any thread. For each call it installs
a per-call usage tracker (forwarding to whatever tracker was active, so ``dspy.track_usage()``
and ``Prediction.get_lm_usage()`` keep working) and adds what DSPy reports for that call to its
totals; docs/evaluation.md ("LM usage and cost") says what each field counts. Python use::

    lm = meter(build_lm("local"))            # attach (idempotent) and return the LM
    before = usage_of(lm)
    ...                                      # any number of threads
    spent = usage_of(lm) - before            # a Usage; spent.to_dict() for reports
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import operator
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from dspy.dsp.utils.settings import settings, thread_local_overrides
from dspy.dsp.utils.utils import dotdict
from dspy.utils.callback import BaseCallback
from dspy.utils.usage_tracker import UsageTracker

_LABEL: contextvars.ContextVar[str | None] = contextvars.ContextVar("csc_usage_label", default=None)


@dataclass
class Usage:
    """Usage totals of a set of LM calls (docs/evaluation.md says what each field counts)."""

    calls: int = 0
    cached_calls: int = 0
    failed_calls: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    lm_seconds: float = 0.0
    cost_usd: float | None = 0.0

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Usage:
        """A Usage from :meth:`to_dict`'s output (keys it does not know, such as
        ``total_tokens``, are ignored)."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    def _combine(self, other: Usage, op: Callable[[Any, Any], Any]) -> Usage:
        values = {f.name: (getattr(self, f.name), getattr(other, f.name)) for f in fields(self)}
        return Usage(**{k: None if None in (a, b) else op(a, b) for k, (a, b) in values.items()})

    def __add__(self, other: Usage) -> Usage:
        return self._combine(other, operator.add)

    def __sub__(self, other: Usage) -> Usage:
        return self._combine(other, operator.sub)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, times and cost rounded."""
        data = asdict(self)
        data["lm_seconds"] = round(self.lm_seconds, 3)
        data["cost_usd"] = None if self.cost_usd is None else round(self.cost_usd, 6)
        data["total_tokens"] = self.total_tokens
        return data


def reported_tokens(entries: Iterable[Mapping[str, Any]]) -> Usage:
    """Token totals of usage entries as DSPy reports them: per call (a usage tracker's entries)
    or per LM (``Prediction.get_lm_usage()``, ``track_usage().get_total_tokens()``) alike."""
    usage = Usage()
    for entry in entries:
        usage.prompt_tokens += _int(entry.get("prompt_tokens"))
        usage.completion_tokens += _int(entry.get("completion_tokens"))
        details = entry.get("prompt_tokens_details") or {}
        if isinstance(details, dict):
            usage.cached_prompt_tokens += _int(details.get("cached_tokens"))
    return usage


def add_role_usage(
    totals: dict[str, dict[str, int]],
    role: str,
    entries: Iterable[Mapping[str, Any]],
    calls: int,
) -> None:
    """Add ``calls`` and the tokens of ``entries`` to ``totals[role]``, the per-role
    ``{calls, prompt_tokens, completion_tokens}`` record a generated dialogue carries."""
    tokens = reported_tokens(entries)
    entry = totals.setdefault(role, {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0})
    entry["calls"] += calls
    entry["prompt_tokens"] += tokens.prompt_tokens
    entry["completion_tokens"] += tokens.completion_tokens


class _CallTracker(UsageTracker):
    """Collects the usage DSPy reports for one call and forwards it to the enclosing tracker."""

    def __init__(self, parent: Any) -> None:
        super().__init__()
        self.parent = parent
        self.entries: list[dict[str, Any]] = []

    def add_usage(self, lm: str, usage_entry: dict[str, Any]) -> None:
        flat = self._flatten_usage_entry(dict(usage_entry or {}))
        self.entries.append(flat)
        if self.parent is not None:
            self.parent.add_usage(lm, usage_entry)

    def __deepcopy__(self, memo: dict[int, Any]) -> UsageTracker:
        # A ParallelExecutor started inside an LM call would copy it: give it a plain tracker.
        return UsageTracker()


@dataclass
class _OpenCall:
    token: contextvars.Token
    tracker: _CallTracker
    start: float
    model: str
    label: str | None


class UsageMeter(BaseCallback):
    """Counts the calls of the LM(s) it is attached to; thread-safe. See :func:`meter`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[tuple[str, str | None], Usage] = {}
        self._open: dict[str, _OpenCall] = {}

    # -------------------------------------------------------------- DSPy callback hooks
    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        """Install a per-call tracker for the duration of this call (same thread and context)."""
        tracker = _CallTracker(settings.usage_tracker)
        token = thread_local_overrides.set(
            dotdict({**thread_local_overrides.get(), "usage_tracker": tracker})
        )
        start = time.perf_counter()
        call = _OpenCall(token, tracker, start, str(getattr(instance, "model", "")), _LABEL.get())
        with self._lock:
            self._open[call_id] = call

    def on_lm_end(
        self, call_id: str, outputs: Any | None, exception: Exception | None = None
    ) -> None:
        """Add the call's reported usage to the totals."""
        end = time.perf_counter()
        with self._lock:
            call = self._open.pop(call_id, None)
        if call is None:
            return
        # ValueError: a different context (should not happen); leave it be.
        with contextlib.suppress(ValueError):
            thread_local_overrides.reset(call.token)
        usage = reported_tokens(call.tracker.entries)
        usage.lm_seconds = end - call.start
        if exception is not None:
            usage.failed_calls = 1
        elif call.tracker.entries:
            usage.calls = 1
        else:
            usage.cached_calls = 1  # DSPy reports no usage for a response from its cache
        key = (call.model, call.label)
        with self._lock:
            self._totals[key] = self._totals.get(key, Usage()) + usage

    # -------------------------------------------------------------- reading
    def _grouped(self, part: int) -> dict[Any, Usage]:
        """Totals per model (``part`` 0) or per label (1) of the (model, label) keys."""
        out: dict[Any, Usage] = {}
        with self._lock:
            items = list(self._totals.items())
        for key, usage in items:
            out[key[part]] = out.get(key[part], Usage()) + usage
        return out

    def by_model(self) -> dict[str, Usage]:
        """Totals per model name."""
        return self._grouped(0)

    def by_label(self) -> dict[str | None, Usage]:
        """Totals per :func:`usage_label` (``None``: calls made outside any label)."""
        return self._grouped(1)

    def total(self) -> Usage:
        """All calls so far, priced where LiteLLM knows the model."""
        by_model = self.by_model().items()
        return sum((replace(u, cost_usd=litellm_cost(m, u)) for m, u in by_model), Usage())


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def litellm_cost(model: str, usage: Usage) -> float | None:
    """Price ``usage`` with LiteLLM's model table; None when it does not know the model."""
    if usage.prompt_tokens == 0 and usage.completion_tokens == 0:
        return 0.0
    if "/" not in model or model.split("/", 1)[0] in ("local", "finetuned", "dummy"):
        return None  # the embedded engine and test fakes have no price
    if "litellm" not in sys.modules:
        # LiteLLM's bundled price table; never fetch one over the network for a report.
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # LiteLLM prints to stdout on misses
            prompt, completion = litellm.cost_per_token(
                model=model,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cache_read_input_tokens=usage.cached_prompt_tokens,
            )
    except Exception:
        return None
    return float(prompt) + float(completion)


# ---------------------------------------------------------------------------- attaching
def meter(lm: Any) -> Any:
    """Attach a :class:`UsageMeter` to ``lm`` (once) and return ``lm``."""
    if lm is None:
        return lm
    callbacks = getattr(lm, "callbacks", None)
    if callbacks is None:
        lm.callbacks = callbacks = []
    if not any(isinstance(cb, UsageMeter) for cb in callbacks):
        callbacks.append(UsageMeter())
    return lm


def meters_of(lms: Iterable[Any]) -> list[UsageMeter]:
    """The distinct meters of some LMs (attaching one where missing); shared LMs count once."""
    callbacks = [cb for lm in lms if lm is not None for cb in meter(lm).callbacks]
    return list({id(cb): cb for cb in callbacks if isinstance(cb, UsageMeter)}.values())


def usage_of(*lms: Any) -> Usage:
    """Total usage so far of these LMs (an LM shared by several roles counts once)."""
    return sum((m.total() for m in meters_of(lms)), Usage())


def labelled_usage_of(*lms: Any) -> dict[str | None, Usage]:
    """Usage so far per :func:`usage_label` over these LMs."""
    out: dict[str | None, Usage] = {}
    for label, usage in (item for m in meters_of(lms) for item in m.by_label().items()):
        out[label] = out.get(label, Usage()) + usage
    return out


@contextlib.contextmanager
def usage_label(label: str | None) -> Iterator[None]:
    """Calls made (in this thread/context) inside the block are counted under ``label``."""
    token = _LABEL.set(label)
    try:
        yield
    finally:
        _LABEL.reset(token)


def format_usage(usage: Usage) -> str:
    """One line for the console: calls, tokens, cached share, time and cost."""
    u = usage
    calls = f"LM calls: {u.calls}"
    calls += f" (+{u.cached_calls} answered from the DSPy cache)" if u.cached_calls else ""
    calls += f" (+{u.failed_calls} failed)" if u.failed_calls else ""
    cached = f" (of which {u.cached_prompt_tokens} cached)" if u.cached_prompt_tokens else ""
    tokens = f"tokens: {u.prompt_tokens} prompt{cached} + {u.completion_tokens} completion"
    cost = "cost unknown" if u.cost_usd is None else f"cost ${u.cost_usd:.4f}"
    return f"{calls}; {tokens}; {u.lm_seconds:.1f} s in LM calls; {cost}"
