"""Site-side and client-level differential privacy, accountants and the privacy ledger."""
