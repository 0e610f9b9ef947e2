"""Personalised federated learning: site-local entries (FedBN, FedPer), Ditto, local fine-tuning."""

from fedcare.personal.site import (
    LOCAL_RECORD,
    PERSONAL_RECORD,
    local_keys,
    merge_local,
    model_for,
    personal_fit,
    shared_part,
)

__all__ = ["LOCAL_RECORD", "PERSONAL_RECORD", "local_keys", "merge_local", "model_for", "personal_fit", "shared_part"]
