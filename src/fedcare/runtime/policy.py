"""SitePolicy: what a site allows to touch its data. A refusal is an answer.

Every instruction that reaches a node passes :meth:`SitePolicy.check` first; a refused
instruction gets an error reply saying why (and, for tasks, which hash it saw).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from fedcare.types import ConfigValue

__all__ = ["SitePolicy"]


@dataclass(frozen=True)
class SitePolicy:
    """A site's rules for incoming instructions.

    Attributes
    ----------
    approved_task_hashes : frozenset[str] or None (default: None)
        Content hashes of tasks the site has reviewed. ``None`` approves exactly the
        task the node was started with (its own hash), nothing else.
    studies : frozenset[str] or None (default: None)
        Studies the site opts in to (deployment): a node joins a coordinator's run only
        when its study is listed. ``None`` (simulation) does not check.
    """

    approved_task_hashes: frozenset[str] | None = field(default=None)
    studies: frozenset[str] | None = field(default=None)

    def study_refusal(self, study: str) -> str | None:
        """Return why the site does not take part in ``study``, or ``None`` when it opts in."""
        if self.studies is None or study in self.studies:
            return None
        return f"refused: study {study!r} is not in this site's opt-in list {sorted(self.studies)}"

    def refusal(self, config: Mapping[str, ConfigValue], *, installed_hash: str) -> str | None:
        """Return why ``config`` is refused, or ``None`` when it is allowed."""
        seen = config.get("task_hash")
        approved = self.approved_task_hashes if self.approved_task_hashes is not None else frozenset({installed_hash})
        if not isinstance(seen, str) or not seen:
            return "refused: the instruction names no task hash"
        if seen not in approved:
            return f"refused: task hash {seen} is not approved by this site"
        if seen != installed_hash:
            return f"refused: task hash {seen} is approved but not the task installed here ({installed_hash})"
        return None
