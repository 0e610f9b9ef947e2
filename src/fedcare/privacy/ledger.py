"""PrivacyLedger: what a site has spent, entry by entry, so anyone can recompute it.

Each entry is one mechanism applied in one round (its :class:`PrivacyCost`: noise
multiplier, sample rate, steps, accountant) plus the ε it brought the site to: this
round alone, this run, and the whole study (every run the site took part in under the
same ``study`` key). Cumulative ε is always recomputed by the accountant over the full
history, never by adding ε values (composition is the accountant's job).

The ledger is storage-agnostic: a :class:`LedgerBackend` keeps the entries
(:class:`MemoryLedgerBackend` here; the SQL one is ``fedcare.store.ledger``), so this
module stays free of databases, as the privacy package must.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from fedcare.errors import ConfigError, PolicyError
from fedcare.privacy.accounting import ACCOUNTANT_VERSION, Accountant, PrivacyCost, epsilon_of

__all__ = ["BudgetExceededError", "LedgerBackend", "LedgerEntry", "MemoryLedgerBackend", "PrivacyLedger", "compose"]


@dataclass(frozen=True)
class LedgerEntry:
    """One charge to a site's budget.

    Attributes
    ----------
    site, study, run_id : str
        Whose budget, which study (budget scope), which run.
    round_no : int
        The round whose update carried this cost.
    cost : PrivacyCost
        The mechanism's parameters, as the accountant needs them.
    delta : float
        δ at which the ε values below are stated.
    epsilon_round, epsilon_run, epsilon_total : float
        ε of this entry alone, of the run so far, and of the study so far.
    accountant_version : str
        Library and version that computed ε (e.g. ``"opacus 1.6.0"``).
    details : dict
        Anything else worth keeping (clip norm, noise seeded or not, who adds noise).
    created_at : datetime
        When the charge was made (UTC).
    """

    site: str
    study: str
    run_id: str
    round_no: int
    cost: PrivacyCost
    delta: float
    epsilon_round: float
    epsilon_run: float
    epsilon_total: float
    accountant_version: str = ACCOUNTANT_VERSION
    details: dict[str, Any] = field(default_factory=dict)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class LedgerBackend(Protocol):
    """Where ledger entries are kept (append-only)."""

    def append_privacy_entries(self, entries: Sequence[LedgerEntry]) -> None:
        """Persist ``entries`` atomically (all or none)."""
        ...

    def privacy_entries(self, site: str, study: str) -> list[LedgerEntry]:
        """All entries of ``site`` in ``study``, oldest first."""
        ...


class MemoryLedgerBackend:
    """Entries in a list: for throwaway runs and tests (lost when the process ends)."""

    def __init__(self) -> None:
        self._entries: list[LedgerEntry] = []
        self._lock = threading.Lock()

    def append_privacy_entries(self, entries: Sequence[LedgerEntry]) -> None:
        """Append in memory."""
        with self._lock:
            self._entries.extend(entries)

    def privacy_entries(self, site: str, study: str) -> list[LedgerEntry]:
        """Entries of one site and study, oldest first."""
        with self._lock:
            return [e for e in self._entries if e.site == site and e.study == study]


def compose(costs: Sequence[PrivacyCost], delta: float) -> float:
    """ε of a history: its own accountant when all entries agree, RDP otherwise."""
    accountants = {c.accountant for c in costs}
    accountant = accountants.pop() if len(accountants) == 1 else Accountant.RDP
    return epsilon_of(costs, delta=delta, accountant=accountant)


class PrivacyLedger:
    """A site's privacy budget account in one study.

    Parameters
    ----------
    backend : LedgerBackend
        Where entries are kept (the site's store).
    site : str
        The site whose budget this is.
    study : str (default: "default")
        Budget scope: ε accumulates over every run charged under the same study.
    delta : float (default: 1e-5)
        δ at which this ledger states ε (the site's policy δ).
    """

    def __init__(self, backend: LedgerBackend, *, site: str, study: str = "default", delta: float = 1e-5) -> None:
        if not 0.0 < delta < 1.0:
            raise ConfigError(f"ledger delta must be in (0, 1), got {delta}")
        self.backend = backend
        self.site = site
        self.study = study
        self.delta = delta
        self._lock = threading.Lock()

    def entries(self, run_id: str | None = None) -> list[LedgerEntry]:
        """Return the entries of this site in the study (of one run when ``run_id`` is given)."""
        rows = self.backend.privacy_entries(self.site, self.study)
        return [e for e in rows if run_id is None or e.run_id == run_id]

    def spent(self, run_id: str | None = None) -> float:
        """ε spent so far in the study (or in one run), recomputed from the history."""
        return compose([e.cost for e in self.entries(run_id)], self.delta)

    def projected(self, costs: Sequence[PrivacyCost]) -> float:
        """ε of the study if ``costs`` were charged now (nothing is written)."""
        return compose([e.cost for e in self.entries()] + list(costs), self.delta)

    def charge(
        self,
        *,
        run_id: str,
        round_no: int,
        costs: Sequence[PrivacyCost],
        details: dict[str, Any] | None = None,
        max_epsilon: float | None = None,
        what: str | None = None,
    ) -> list[LedgerEntry]:
        """Record ``costs`` for one round; refuse (raise) if they pass ``max_epsilon``.

        The check and the write happen under one lock, so two concurrent rounds cannot
        both squeeze under the cap. ``what`` names the charge in a refusal (default
        ``"round <round_no>"``).

        Raises
        ------
        BudgetExceededError
            When the study's ε after the charge would exceed ``max_epsilon``; nothing
            is written.
        """
        with self._lock:
            history = [e.cost for e in self.entries()]
            run_history = [e.cost for e in self.entries() if e.run_id == run_id]
            total_after = compose(history + list(costs), self.delta)
            if max_epsilon is not None and total_after > max_epsilon:
                raise BudgetExceededError(
                    f"refused: {what or f'round {round_no}'} would bring site {self.site} to epsilon={total_after:.3f} "
                    f"(delta={self.delta:g}), above its budget max_epsilon={max_epsilon:g} "
                    f"(spent {compose(history, self.delta):.3f})"
                )
            out: list[LedgerEntry] = []
            for cost in costs:
                history.append(cost)
                run_history.append(cost)
                out.append(
                    LedgerEntry(
                        site=self.site,
                        study=self.study,
                        run_id=run_id,
                        round_no=round_no,
                        cost=cost,
                        delta=self.delta,
                        epsilon_round=compose([cost], self.delta),
                        epsilon_run=compose(run_history, self.delta),
                        epsilon_total=compose(history, self.delta),
                        details=dict(details or {}),
                    )
                )
            self.backend.append_privacy_entries(out)
            return out


class BudgetExceededError(PolicyError):
    """A charge would take a site past its privacy budget (the round is refused)."""
