"""The narrow write path from the runtime to the Store, as the runtime names it.

Defined in the core (:mod:`fedcare.protocols`) so that the store implements it without
importing the runtime. The Coordinator records through :class:`Recorder` only; reports
and dashboards read the Store. :class:`NullRecorder` records nothing.
"""

from fedcare.protocols import ExchangeReport, NullRecorder, Recorder, RoundReport, RunSpec

__all__ = ["ExchangeReport", "NullRecorder", "Recorder", "RoundReport", "RunSpec"]
