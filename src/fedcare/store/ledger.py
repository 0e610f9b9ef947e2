"""SqlLedgerBackend: a site's privacy ledger in the run store's ``privacy_ledger`` table.

In simulation every site's ledger may share the run store (rows are keyed by site);
a deployed node keeps its own store. Entries are append-only and written in one
transaction, so a crash never leaves half a round charged.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from fedcare.errors import StoreError
from fedcare.privacy.accounting import Accountant, Mechanism, PrivacyCost
from fedcare.privacy.ledger import LedgerEntry, PrivacyLedger
from fedcare.store.models import PrivacyLedgerRow
from fedcare.store.sql import SqlStore

__all__ = ["SqlLedgerBackend", "sql_ledger"]


class SqlLedgerBackend:
    """Ledger entries in a :class:`SqlStore` (SQLite file or PostgreSQL).

    Parameters
    ----------
    store : SqlStore
        The store whose database holds the ``privacy_ledger`` table.
    """

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self._session = sessionmaker(store.engine, expire_on_commit=False)

    def append_privacy_entries(self, entries: Sequence[LedgerEntry]) -> None:
        """Insert ``entries`` in one transaction."""
        try:
            with self._session.begin() as s:
                for e in entries:
                    s.add(
                        PrivacyLedgerRow(
                            site=e.site,
                            study=e.study,
                            run_id=e.run_id,
                            round_no=e.round_no,
                            mechanism=e.cost.mechanism.value,
                            noise_multiplier=e.cost.noise_multiplier,
                            sample_rate=e.cost.sample_rate,
                            steps=e.cost.steps,
                            delta=e.delta,
                            accountant=e.cost.accountant.value,
                            accountant_version=e.accountant_version,
                            epsilon_round=e.epsilon_round,
                            epsilon_run=e.epsilon_run,
                            epsilon_total=e.epsilon_total,
                            details=dict(e.details),
                            created_at=e.created_at,
                        )
                    )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot write the privacy ledger: {exc.__class__.__name__}: {exc}") from None

    def privacy_entries(self, site: str, study: str) -> list[LedgerEntry]:
        """Entries of ``site`` in ``study``, oldest first."""
        try:
            with self._session() as s:
                rows = list(
                    s.scalars(
                        select(PrivacyLedgerRow)
                        .where(PrivacyLedgerRow.site == site, PrivacyLedgerRow.study == study)
                        .order_by(PrivacyLedgerRow.id)
                    )
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read the privacy ledger: {exc.__class__.__name__}: {exc}") from None
        return [
            LedgerEntry(
                site=r.site,
                study=r.study,
                run_id=r.run_id,
                round_no=r.round_no,
                cost=PrivacyCost(
                    mechanism=Mechanism(r.mechanism),
                    noise_multiplier=r.noise_multiplier,
                    sample_rate=r.sample_rate,
                    steps=r.steps,
                    accountant=Accountant(r.accountant),
                ),
                delta=r.delta,
                epsilon_round=r.epsilon_round,
                epsilon_run=r.epsilon_run,
                epsilon_total=r.epsilon_total,
                accountant_version=r.accountant_version,
                details=dict(r.details or {}),
                created_at=r.created_at,
            )
            for r in rows
        ]

    def sites(self, study: str | None = None) -> list[str]:
        """Sites with at least one entry (in ``study``)."""
        with self._session() as s:
            q = select(PrivacyLedgerRow.site).distinct()
            if study is not None:
                q = q.where(PrivacyLedgerRow.study == study)
            return sorted(s.scalars(q))


def sql_ledger(store: SqlStore, *, site: str, study: str = "default", delta: float = 1e-5) -> PrivacyLedger:
    """A :class:`PrivacyLedger` for ``site`` kept in ``store``."""
    return PrivacyLedger(SqlLedgerBackend(store), site=site, study=study, delta=delta)
