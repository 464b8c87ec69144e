"""csc: strategy-aligned customer-support conversation with DSPy.

Core objects every stage shares live here: the strategy :class:`Framework`, the :class:`Dialogue`
data model and LM configuration. Nothing is configured at import time.
"""

from csc.dialogue import Dialogue, Speaker, Turn
from csc.framework import Framework, FrameworkError, Stage, Strategy

__version__ = "0.1.0"

__all__ = [
    "Dialogue",
    "Framework",
    "FrameworkError",
    "Speaker",
    "Stage",
    "Strategy",
    "Turn",
    "__version__",
]
