"""Which task hashes a site approves: listed hashes, or hashes a trusted reviewer signed.

A site reviews a task package once (or trusts a colleague who did) and approves the exact
files behind it: the task hash of its :class:`~fedcare.task_manifest.TaskManifest`.
Two rules approve a hash:

* **listed**: the hash is in the site's ``approved_task_hashes``;
* **signed**: a reviewer whose Ed25519 public key the site trusts signed the hash
  (``fedcare tasks sign``). The signature file carries the manifest it signs, so a later
  version of the same task can be compared file by file with the one approved.

Removing (or revoking) a reviewer's key withdraws every approval that rests on it. A
signature that does not verify (forged, altered, or over a manifest whose digest is not
the signed hash) approves nothing, and the site says why when it refuses the task.
Keys are PEM files (PKCS#8 private, SubjectPublicKeyInfo public); signatures are JSON.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedcare.errors import ConfigError
from fedcare.task_manifest import TaskManifest

__all__ = [
    "LISTED_RULE",
    "SIGNATURE_FORMAT",
    "TaskApprovals",
    "generate_reviewer_key",
    "load_public_key",
    "load_task_approvals",
    "reviewer_fingerprint",
    "sign_manifest",
    "verify_signature",
]

#: Version tag of a signature file; also the domain separator of the signed bytes.
SIGNATURE_FORMAT = "fedcare-task-signature/1"
#: Rule name recorded when a hash is on the site's own list.
LISTED_RULE = "approved_task_hashes"


def reviewer_fingerprint(key: Ed25519PublicKey) -> str:
    """First 32 hex digits of the sha256 of the raw public key (how sites name reviewers)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:32]


def generate_reviewer_key(private_path: Path, public_path: Path) -> str:
    """Write a new Ed25519 key pair (private file readable by its owner only); return its fingerprint."""
    for p in (private_path, public_path):
        if p.exists():
            raise ConfigError(f"{p} exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public = key.public_key()
    public_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.write_bytes(
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return reviewer_fingerprint(public)


def _load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(f"cannot read reviewer key {path}: {exc.strerror or exc}") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: reviewer keys must be Ed25519, got {type(key).__name__}")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read a reviewer's Ed25519 public key (PEM), with a one-line error naming the file."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read reviewer public key {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path}: reviewer keys must be Ed25519, got {type(key).__name__}")
    return key


def _signed_bytes(task: str, task_hash: str, reviewer: str) -> bytes:
    body = json.dumps(
        {"reviewer": reviewer, "task": task, "task_hash": task_hash}, sort_keys=True, separators=(",", ":")
    )
    return f"{SIGNATURE_FORMAT}\n{body}".encode()


def sign_manifest(manifest: TaskManifest, private_key: Path, *, reviewer: str = "") -> dict[str, Any]:
    """The signature document for ``manifest``'s hash, signed with the reviewer's private key."""
    key = _load_private_key(private_key)
    digest = manifest.digest
    return {
        "format": SIGNATURE_FORMAT,
        "task": manifest.name,
        "version": manifest.version,
        "task_hash": digest,
        "reviewer": reviewer,
        "reviewer_key": reviewer_fingerprint(key.public_key()),
        "signature": base64.b64encode(key.sign(_signed_bytes(manifest.name, digest, reviewer))).decode(),
        "manifest": manifest.to_dict(),
    }


def verify_signature(doc: Any, keys: Mapping[str, Ed25519PublicKey], where: str) -> TaskManifest:
    """Check one signature document against trusted ``keys`` (fingerprint -> key); return its manifest.

    Raises
    ------
    ConfigError
        Malformed, by an untrusted key, not verifying, or over a manifest that is not the
        signed hash.
    """
    if not isinstance(doc, dict) or doc.get("format") != SIGNATURE_FORMAT:
        raise ConfigError(f"{where}: not a {SIGNATURE_FORMAT} document")
    fields = {k: doc.get(k) for k in ("task", "task_hash", "reviewer_key", "signature")}
    if not all(isinstance(v, str) and v for v in fields.values()):
        raise ConfigError(f"{where}: 'task', 'task_hash', 'reviewer_key' and 'signature' must be non-empty strings")
    key = keys.get(str(fields["reviewer_key"]))
    if key is None:
        raise ConfigError(f"{where}: signed by reviewer key {fields['reviewer_key']}, which this site does not trust")
    reviewer = doc.get("reviewer", "")
    if not isinstance(reviewer, str):
        raise ConfigError(f"{where}: 'reviewer' must be a string")
    signed = _signed_bytes(str(fields["task"]), str(fields["task_hash"]), reviewer)
    try:
        key.verify(base64.b64decode(str(fields["signature"]), validate=True), signed)
    except (InvalidSignature, ValueError):
        raise ConfigError(f"{where}: the signature does not verify (forged or altered)") from None
    manifest = TaskManifest.from_dict(doc.get("manifest"), f"{where} manifest")  # type: ignore[arg-type]
    if manifest.digest != fields["task_hash"] or manifest.name != fields["task"]:
        raise ConfigError(f"{where}: its manifest is not the signed task hash (altered)")
    return manifest


@dataclass(frozen=True)
class TaskApprovals:
    """A site's approved task hashes, the rule behind each, and the manifests it knows.

    Attributes
    ----------
    rules : Mapping[str, str]
        Approved hash -> the rule that approves it (for the audit log).
    manifests : tuple[TaskManifest, ...]
        Approved versions whose files are known (from signatures and manifest files), to
        say what changed when a newer version of the same task is refused.
    problems : tuple[str, ...]
        Signatures that approve nothing, and why (revoked, untrusted, forged).
    """

    rules: Mapping[str, str] = field(default_factory=dict)
    manifests: tuple[TaskManifest, ...] = ()
    problems: tuple[str, ...] = ()

    def rule_for(self, task_hash: str) -> str | None:
        """The rule that approves ``task_hash``, or ``None``."""
        return self.rules.get(task_hash)

    def why_not(self, installed: TaskManifest | None) -> str:
        """What the site knows about an unapproved task: changes since the approved version, bad signatures."""
        if installed is None:
            return ""
        notes: list[str] = []
        for approved in self.manifests:
            if approved.name == installed.name and approved.digest != installed.digest:
                change = installed.diff_from(approved).describe()
                notes.append(
                    f"the approved version {approved.version or '?'} ({approved.digest[:12]}) differs: {change}"
                )
                break
        notes += [p for p in self.problems if f"task {installed.name!r}" in p]
        return "; ".join(notes)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def load_task_approvals(
    *,
    hashes: Iterable[str] = (),
    trusted_keys: Iterable[Path] = (),
    signatures: Iterable[Path] = (),
    revoked_keys: Iterable[str] = (),
    manifests: Iterable[Path] = (),
) -> TaskApprovals:
    """Build a site's approvals from its policy: listed hashes, trusted keys, signature files.

    A key whose fingerprint is in ``revoked_keys`` is not trusted even when listed. A
    signature that fails is recorded in ``problems`` (it approves nothing); a key or
    manifest file that cannot be read is a configuration error.
    """
    rules: dict[str, str] = dict.fromkeys(hashes, LISTED_RULE)
    revoked = set(revoked_keys)
    keys: dict[str, Ed25519PublicKey] = {}
    for path in trusted_keys:
        key = load_public_key(Path(path))
        fp = reviewer_fingerprint(key)
        if fp not in revoked:
            keys[fp] = key
    known: list[TaskManifest] = []
    problems: list[str] = []
    for path in signatures:
        path = Path(path)
        doc = _read_json(path, "task signature")
        task = doc.get("task") if isinstance(doc, dict) else None
        label = f"signature {path.name} for task {task!r}"
        if isinstance(doc, dict) and doc.get("reviewer_key") in revoked:
            problems.append(f"{label}: reviewer key {doc.get('reviewer_key')} is revoked")
            continue
        try:
            manifest = verify_signature(doc, keys, label)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        reviewer = doc.get("reviewer") or ""
        rules.setdefault(
            manifest.digest,
            f"signed by reviewer {doc['reviewer_key']}" + (f" ({reviewer})" if reviewer else "") + f" in {path.name}",
        )
        known.append(manifest)
    for path in manifests:
        path = Path(path)
        known.append(TaskManifest.from_dict(_read_json(path, "task manifest"), str(path)))
    return TaskApprovals(rules=rules, manifests=tuple(known), problems=tuple(problems))
