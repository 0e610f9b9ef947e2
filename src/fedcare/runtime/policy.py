"""SitePolicy: what a site allows to touch its data. A refusal is an answer.

Every instruction that reaches a node passes :meth:`SitePolicy.check` first; a refused
instruction gets an error reply saying why (and, for tasks, which hash it saw).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from fedcare.errors import ConfigError
from fedcare.runtime.approval import LISTED_RULE, TaskApprovals
from fedcare.task_manifest import TaskManifest
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
    max_epsilon : float or None (default: None)
        The site's privacy budget for a study (ε at ``delta``, all runs together).
        ``None``: no budget. With a budget the site is fail-closed: it refuses rounds
        without a DP guarantee and rounds that would take it past ``max_epsilon``.
    delta : float (default: 1e-5)
        δ at which the site states and caps its ε.
    trust_central_noise : bool (default: False)
        Accept client-level DP whose noise the server adds (central mode).
    allow_seeded_noise : bool (default: False)
        Accept DP noise drawn from the coordinator's round seed (tests and demos).
    require_secure_aggregation : bool (default: False)
        Send updates only masked (SecAgg+) or encrypted (CKKS); a plain fit instruction is refused.
    require_encryption : bool (default: False)
        Send updates only encrypted under threshold CKKS; plain fits and SecAgg+ are refused.
    require_peer_to_peer : bool (default: False)
        Take part only in peer-to-peer rounds (``secure_aggregation.mode = "p2p"``): the
        site aggregates itself and the coordinator only relays; anything else is refused.
    min_peers : int (default: 1)
        The fewest sites (this one included) the site's update may be summed with.
        Above 1 the update must also be masked: a plain update is seen alone.
    approved_study_hashes : frozenset[str] or None (default: None)
        Content hashes of the study files the site reviewed (``study.toml``); ``None``
        accepts any version of an opted-in study.
    task_approvals : TaskApprovals or None (default: None)
        Hashes approved by a trusted reviewer's signature (``fedcare tasks sign``), with
        the manifests of approved versions; see :mod:`fedcare.runtime.approval`.
    """

    approved_task_hashes: frozenset[str] | None = field(default=None)
    studies: frozenset[str] | None = field(default=None)
    max_epsilon: float | None = None
    delta: float = 1e-5
    trust_central_noise: bool = False
    allow_seeded_noise: bool = False
    require_secure_aggregation: bool = False
    require_encryption: bool = False
    require_peer_to_peer: bool = False
    min_peers: int = 1
    approved_study_hashes: frozenset[str] | None = field(default=None)
    task_approvals: TaskApprovals | None = None

    def __post_init__(self) -> None:
        """Validate the privacy budget (a bad cap must fail loudly, not open the door)."""
        if self.max_epsilon is not None and not (self.max_epsilon > 0 and self.max_epsilon == self.max_epsilon):
            raise ConfigError(f"SitePolicy.max_epsilon must be positive, got {self.max_epsilon}")
        if not 0.0 < self.delta < 1.0:
            raise ConfigError(f"SitePolicy.delta must be in (0, 1), got {self.delta}")
        if isinstance(self.min_peers, bool) or not isinstance(self.min_peers, int) or self.min_peers < 1:
            raise ConfigError(f"SitePolicy.min_peers must be an integer >= 1, got {self.min_peers!r}")

    def study_refusal(self, study: str) -> str | None:
        """Return why the site does not take part in ``study``, or ``None`` when it opts in."""
        if self.studies is None or study in self.studies:
            return None
        return f"refused: study {study!r} is not in this site's opt-in list {sorted(self.studies)}"

    def exposure_refusal(self, *, secure: bool, peers: int | None = None) -> str | None:
        """Return why an update may not leave (plain, or summed with too few peers), or ``None``."""
        strict = self.require_secure_aggregation or self.require_encryption or self.require_peer_to_peer
        if not secure and (strict or self.min_peers > 1):
            return "refused: this site sends its update only under secure aggregation (it would be seen alone)"
        if peers is not None and peers < self.min_peers:
            return f"refused: {peers} site(s) in the aggregate, this site requires at least {self.min_peers}"
        return None

    def approval_rule(self, task_hash: str, *, installed_hash: str | None = None) -> str | None:
        """The rule that approves ``task_hash`` (recorded in the audit log), or ``None``."""
        if self.approved_task_hashes is None and task_hash == installed_hash:
            return "installed task (no approved list: simulation)"
        if self.approved_task_hashes is not None and task_hash in self.approved_task_hashes:
            return LISTED_RULE
        return self.task_approvals.rule_for(task_hash) if self.task_approvals is not None else None

    def refusal(
        self,
        config: Mapping[str, ConfigValue],
        *,
        installed_hash: str,
        installed_manifest: TaskManifest | None = None,
    ) -> str | None:
        """Return why ``config`` is refused, or ``None`` when it is allowed.

        With ``installed_manifest`` an unapproved task's refusal also says what changed
        since the approved version of the same task (files added, removed, modified).
        """
        seen = config.get("task_hash")
        if not isinstance(seen, str) or not seen:
            return "refused: the instruction names no task hash"
        if self.approval_rule(seen, installed_hash=installed_hash) is None:
            detail = self.task_approvals.why_not(installed_manifest) if self.task_approvals is not None else ""
            return f"refused: task hash {seen} is not approved by this site" + (f"; {detail}" if detail else "")
        if seen != installed_hash:
            return f"refused: task hash {seen} is approved but not the task installed here ({installed_hash})"
        return self.study_hash_refusal(config)

    def study_hash_refusal(self, config: Mapping[str, ConfigValue]) -> str | None:
        """Return why the study named by an instruction (``study_hash``) is refused, or ``None``."""
        if self.approved_study_hashes is None:
            return None
        seen = config.get("study_hash")
        if not isinstance(seen, str) or not seen:
            return "refused: the instruction names no study hash and this site pins the studies it accepts"
        if seen not in self.approved_study_hashes:
            return f"refused: study hash {seen} is not approved by this site"
        return None
