"""Decoders under fuzz: each takes a byte string and must return or raise a FedcareError, nothing else.

Shared by ``tests/robustness/test_fuzz_decoders.py`` (Hypothesis, in CI) and
``benchmarks/fuzz.py`` (a longer seeded run). A *target* has a valid seed input and a
``decode(blob, workdir)`` that feeds a byte string to one real decoder the way
production does (from memory, or from a file in ``workdir``). Mutations are byte-level
(flip, insert, delete, duplicate, truncate, splice a hostile token) and, for JSON-based
formats, tree-level (replace any node with a value of another type, deeply nested
JSON, huge numbers), so the fuzzer reaches past the first parse.
"""

from __future__ import annotations

import copy
import functools
import io
import json
import logging
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from fedcare.errors import FedcareError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SYNTHEA = FIXTURES / "synthea"
PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"

#: Hostile tokens spliced into inputs (JSON, TOML and binary alike).
TOKENS: tuple[bytes, ...] = (
    b"[" * 3000,
    b'{"a":' * 3000,
    b'"F8_E4M3"',
    b'"BF16"',
    b"1e308",
    b"-1e308",
    b"-1",
    b"0",
    b"99999999999999999999999",
    b"NaN",
    b"Infinity",
    b"null",
    b"true",
    b"[]",
    b"{}",
    b'"\\ud800"',
    b"\xff\xfe",
    b"\x00" * 8,
    b"\xff" * 8,
    b'"__metadata__"',
    b'["w", 1]',
    b"= [",
    b"= {",
    b'= "x"',
    b"= -1",
    b"= 1e308",
    b"= nan",
    b"= true",
    b"[[x]]\n",
    b"[x]\n",
    b"a." * 200 + b"b = 1\n",
)
#: Replacement values for tree-level JSON mutation.
JSON_VALUES: tuple[Any, ...] = (  # templates: always deep-copied before use
    None,
    True,
    0,
    -1,
    2**70,
    1e308,
    -1e308,
    "",
    "x",
    "F8_E4M3",
    "\ud800",
    [],
    [1, "a"],
    {},
    {"a": [1]},
    "[" * 50 + "]" * 50,
    json.dumps([1, "w"]),
)


def mutate_bytes(data: bytes, rnd: random.Random, steps: int) -> bytes:
    """Apply ``steps`` random byte-level edits to ``data``."""
    buf = bytearray(data)
    for _ in range(steps):
        op = rnd.randrange(7)
        pos = rnd.randrange(len(buf) + 1) if buf else 0
        if op == 0 and buf:  # flip a byte
            buf[min(pos, len(buf) - 1)] = rnd.randrange(256)
        elif op == 1:  # insert random bytes
            buf[pos:pos] = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 9)))
        elif op == 2 and buf:  # delete a range
            del buf[pos : pos + rnd.randrange(1, 64)]
        elif op == 3 and buf:  # duplicate a range
            end = min(len(buf), pos + rnd.randrange(1, 64))
            buf[pos:pos] = buf[pos:end]
        elif op == 4:  # truncate
            del buf[pos:]
        elif op == 5:  # splice a hostile token
            buf[pos:pos] = rnd.choice(TOKENS)
        elif op == 6 and buf:  # overwrite with a hostile token
            token = rnd.choice(TOKENS)
            buf[pos : pos + len(token)] = token
    return bytes(buf)


def _nodes(tree: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if len(path) > 12:  # do not walk into a deeply nested value a previous step planted
        return out
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += _nodes(v, (*path, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out += _nodes(v, (*path, i))
    return out


def mutate_tree(tree: Any, rnd: random.Random, steps: int) -> Any:
    """Replace, delete or rename random nodes of a JSON tree (edited in place, and returned)."""
    for _ in range(steps):
        nodes = _nodes(tree)
        path = rnd.choice(nodes)
        if not path:
            tree = copy.deepcopy(rnd.choice(JSON_VALUES)) if rnd.random() < 0.1 else tree
            continue
        parent = tree
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        op = rnd.randrange(4)
        if op == 0 or op == 1:
            value = copy.deepcopy(rnd.choice(JSON_VALUES))  # never edit the shared templates later
            if value == "[" * 50 + "]" * 50 and rnd.random() < 0.5:
                value = _deep(rnd.randrange(100, 3000))
            parent[key] = value
        elif op == 2:
            del parent[key]
        elif isinstance(parent, dict):  # rename a key
            parent[rnd.choice(["", "__metadata__", str(key) + "x", "w"])] = parent.pop(key)
    return tree


def _deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def _dumps(tree: Any) -> bytes:
    try:
        return json.dumps(tree).encode("utf-8", "surrogatepass")
    except RecursionError:
        return b"[" * 5000 + b"]" * 5000


@dataclass(frozen=True)
class Target:
    """One decoder under fuzz."""

    name: str
    seed: Callable[[Path], bytes]
    decode: Callable[[bytes, Path], object]
    tree: Callable[[bytes, random.Random, int], bytes] | None = None  # structure-aware mutation

    def mutate(self, data: bytes, rnd: random.Random) -> bytes:
        """One mutated input: tree-level edits (when the format has a tree) and/or byte edits."""
        steps = rnd.choice((1, 1, 2, 3, 6))
        if self.tree is not None and rnd.random() < 0.6:
            data = self.tree(data, rnd, steps)
            if rnd.random() < 0.7:
                return data
        return mutate_bytes(data, rnd, steps)


# -- serde: safetensors ------------------------------------------------------------------


def _state_seed(_: Path) -> bytes:
    from fedcare.serde import encode_state

    return encode_state(
        {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2), "n": np.array(3, dtype=np.int64)},
        metadata={"note": "x"},
    )


def _safetensors_tree(data: bytes, rnd: random.Random, steps: int) -> bytes:
    n = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8 : 8 + n])
    except ValueError:
        return data
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if isinstance(meta, dict) and rnd.random() < 0.3:  # the order / scalars lists are JSON inside JSON
        key = rnd.choice(list(meta) or ["fedcare.order"])
        try:
            inner = json.loads(meta[key]) if isinstance(meta.get(key), str) else meta.get(key)
        except ValueError:
            inner = meta.get(key)
        meta[key] = _dumps(mutate_tree(inner, rnd, steps)).decode("utf-8", "surrogatepass")
    else:
        header = mutate_tree(header, rnd, steps)
    text = _dumps(header)
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n :]


def _decode_state(blob: bytes, _: Path) -> object:
    from fedcare.serde import decode_state

    return decode_state(blob, where="fuzz")


# -- transport: frames and the message assembler -----------------------------------------


def _frames_seed(_: Path) -> bytes:
    """A whole reply as length-prefixed serialised SiteFrames (header, chunks, end)."""
    from fedcare.transport.proto import fedcare_pb2 as pb
    from fedcare.transport.wire import encode_message
    from fedcare.types import Message, MessageKind, Payload, RunId, SiteId

    message = Message(
        kind=MessageKind.FIT,
        run_id=RunId("run-1"),
        round_no=1,
        site=SiteId("site-00"),
        payload=Payload(
            arrays={"model": {"w": np.linspace(-1, 1, 8, dtype=np.float32)}},
            config={"lr": 0.1, "name": "x", "n": 3, "flag": True},
            metrics={"num_examples": 3.0},
        ),
        reply_to="abc",
    )
    out = bytearray()
    for frame in encode_message(message).frames(pb.SiteFrame, 48):
        raw = frame if isinstance(frame, bytes) else frame.SerializeToString()
        out += len(raw).to_bytes(4, "little") + raw
    return bytes(out)


def _split_frames(blob: bytes) -> list[bytes]:
    frames, pos = [], 0
    while pos + 4 <= len(blob):
        n = int.from_bytes(blob[pos : pos + 4], "little")
        frames.append(blob[pos + 4 : pos + 4 + min(n, 1 << 20)])
        pos += 4 + n
    return frames


def _frames_tree(data: bytes, rnd: random.Random, steps: int) -> bytes:
    """Mutate one frame's bytes only (the framing stays intact, so later frames still arrive)."""
    frames = _split_frames(data)
    if not frames:
        return data
    i = rnd.randrange(len(frames))
    frames[i] = mutate_bytes(frames[i], rnd, steps)
    if rnd.random() < 0.2:  # drop, repeat or reorder a whole frame
        j = rnd.randrange(len(frames))
        op = rnd.randrange(3)
        if op == 0:
            del frames[j]
        elif op == 1:
            frames.insert(j, frames[i])
        else:
            frames[i], frames[j] = frames[j], frames[i]
    return b"".join(len(f).to_bytes(4, "little") + f for f in frames)


def _decode_frames(blob: bytes, _: Path) -> object:
    """The server's reader path: parse each frame as gRPC would, feed the assembler."""
    from fedcare.errors import ProtocolError
    from fedcare.transport.frames import BadFrame, frame_kind, parse_site_frame
    from fedcare.transport.wire import MessageAssembler

    assembler = MessageAssembler(max_message_bytes=1 << 20, where="fuzz")
    out = []
    for raw in _split_frames(blob):
        frame = parse_site_frame(raw)
        which = frame_kind(frame)
        try:
            if isinstance(frame, BadFrame):
                raise ProtocolError(f"fuzz: {frame.reason}")
            if which == "header":
                assembler.start(frame.header)
            elif which == "chunk":
                assembler.add(frame if not hasattr(frame, "WhichOneof") else frame.chunk)
            elif which == "end":
                out.append(assembler.finish(frame.end))
        except FedcareError:
            assembler.reset()
    return out


# -- site memory -------------------------------------------------------------------------

_RUN = "study/run-1"


def _memory_seed(workdir: Path) -> bytes:
    from fedcare.store.site_memory import SiteMemoryFiles
    from fedcare.types import RunId

    files = SiteMemoryFiles(workdir / "seed-memory")
    files.save(RunId(_RUN), {"scaffold_c_i": {"w": np.arange(4, dtype=np.float32)}, "p": {"b": np.ones(())}})
    return files.path(RunId(_RUN)).read_bytes()


def _decode_memory(blob: bytes, workdir: Path) -> object:
    """Load a damaged memory file: it comes back intact, or is set aside (never left in place)."""
    from fedcare.store.site_memory import SiteMemoryFiles
    from fedcare.types import RunId

    folder = workdir / "memory"
    folder.mkdir(exist_ok=True)
    for old in folder.glob("*.corrupt*"):
        old.unlink()
    files = SiteMemoryFiles(folder)
    path = files.path(RunId(_RUN))
    path.write_bytes(blob)
    logger = logging.getLogger("fedcare.store.site_memory")
    level = logger.level
    logger.setLevel(logging.ERROR)  # one warning per damaged file: thousands here
    try:
        memory = files.load(RunId(_RUN))
    finally:
        logger.setLevel(level)
    if not memory and path.exists():
        raise AssertionError("a damaged site-memory file was neither loaded nor set aside")
    return memory


# -- audit log ---------------------------------------------------------------------------


def _audit_seed(workdir: Path) -> bytes:
    from fedcare.store.audit import AuditLog

    folder = workdir / "seed-audit"
    shutil.rmtree(folder, ignore_errors=True)
    log = AuditLog(folder / "audit.jsonl", actor="site-a")
    for r in (1, 2):
        log.append("received", kind="fit", round_no=r, records=[{"name": "model", "size": 8, "blake3": "ab" * 32}])
        log.append("sent", kind="fit", round_no=r)
    log.close()
    head = (folder / "audit.jsonl.head").read_bytes()
    return (folder / "audit.jsonl").read_bytes() + b"\x00HEAD\x00" + head


def _audit_tree(data: bytes, rnd: random.Random, steps: int) -> bytes:
    body, sep, head = data.partition(b"\x00HEAD\x00")
    lines = body.split(b"\n")
    if rnd.random() < 0.2:
        try:
            head = _dumps(mutate_tree(json.loads(head), rnd, steps))
        except ValueError:
            pass
    else:
        i = rnd.randrange(len(lines))
        try:
            lines[i] = _dumps(mutate_tree(json.loads(lines[i]), rnd, steps))
        except ValueError:
            lines[i] = mutate_bytes(lines[i], rnd, steps)
    return b"\n".join(lines) + sep + head


def _decode_audit(blob: bytes, workdir: Path) -> object:
    """verify_audit_log (plain and with anchors) must answer with a report, and opening the log for writing
    either continues a chain that verifies or refuses it with a StoreError."""
    from fedcare.store.audit import AuditLog, verify_audit_log

    body, _, head = blob.partition(b"\x00HEAD\x00")
    folder = workdir / "audit"
    folder.mkdir(exist_ok=True)
    path = folder / "audit.jsonl"
    path.write_bytes(body)
    (folder / "audit.jsonl.head").write_bytes(head)
    report = verify_audit_log(path)
    anchored = verify_audit_log(path, anchors=path)
    assert isinstance(anchored.ok, bool)
    if report.ok:
        AuditLog(path, actor="site-a").close()
    else:
        try:
            AuditLog(path, actor="site-a").close()
        except FedcareError:
            pass
        else:
            raise AssertionError("a log that fails verification was opened for writing")
    return report


# -- TOML configs ------------------------------------------------------------------------

_SIMULATE_TOML = """\
name = "heart-byo"
seed = 0
rounds = 2
[sites]
a = "a.csv"
b = "b.csv"
[data]
target = "y"
categorical = ["c"]
missing = ["?", ""]
test_fraction = 0.3
[task]
name = "logreg"
[federated]
strategy = "fedavg"
fit = { optimizer = "sgd", lr = 0.05, batch_size = 4, local_epochs = 1 }
[baseline]
optimizer = "adam"
lr = 0.001
batch_size = 4
local_epochs = 2
"""

_SERVER_TOML = """\
[server]
listen = "127.0.0.1:0"
ca = "ca.pem"
cert = "hub.pem"
key = "hub.key"
allowed_sites = ["a", "b"]
wait_for_sites = 2
[study]
name = "heart-2026"
task = "logreg"
task_params = { n_features = 13 }
strategy = "fedavg"
fit_config = { lr = 0.05, batch_size = 4 }
rounds = 3
min_sites = 2
[store]
url = "sqlite:///x.db"
"""

_NODE_TOML = """\
[site]
name = "a"
[server]
address = "127.0.0.1:50051"
ca = "ca.pem"
cert = "a.pem"
key = "a.key"
[policy]
studies = ["heart-2026"]
approved_task_hashes = ["{h}"]
max_epsilon = 3.0
[data]
csv = "a.csv"
label = "y"
test_fraction = 0.3
[audit]
path = "audit.jsonl"
""".replace("{h}", "0" * 64)

_DATA_SITE_TOML = """\
[site]
id = "a"
[source]
kind = "csv"
path = "a.csv"
na_values = ["?"]
[schema]
target = "y"
[schema.columns.age]
min = 0
max = 120
[schema.columns.c]
type = "category"
codes = ["p", "q"]
[schema.columns.y]
type = "boolean"
"""


def _toml_seed(text: str) -> Callable[[Path], bytes]:
    def seed(workdir: Path) -> bytes:
        for name in ("a.csv", "b.csv"):
            (workdir / name).write_text("age,c,y\n50,p,1\n60,q,0\n70,p,1\n40,q,0\n")
        return text.encode()

    return seed


def _toml_tree(data: bytes, rnd: random.Random, steps: int) -> bytes:
    """Line-level edits: replace a value by one of another type, drop, repeat or move a line."""
    lines = data.split(b"\n")
    for _ in range(steps):
        i = rnd.randrange(len(lines))
        op = rnd.randrange(4)
        if op == 0 and b"=" in lines[i]:
            key = lines[i].split(b"=", 1)[0]
            value = rnd.choice(
                [b"-1", b"0", b"1e308", b"nan", b"inf", b'"x"', b'""', b"[]", b"{}", b"true", b"[1, 'a']", b"{ a = 1 }"]
            )
            lines[i] = key + b"= " + value
        elif op == 1:
            del lines[i]
        elif op == 2:
            lines.insert(rnd.randrange(len(lines) + 1), lines[i])
        else:
            lines.insert(rnd.randrange(len(lines) + 1), rnd.choice(TOKENS))
        if not lines:
            lines = [b""]
    return b"\n".join(lines)


def _toml_decoder(loader: Callable[[Path], object]) -> Callable[[bytes, Path], object]:
    def decode(blob: bytes, workdir: Path) -> object:
        path = workdir / "config.toml"
        path.write_bytes(blob)
        return loader(path)

    return decode


def _load_simulate(path: Path) -> object:
    from fedcare.runconfig import load_simulate_config

    return load_simulate_config(path)


def _load_server(path: Path) -> object:
    from fedcare.deploy.config import load_server_config

    return load_server_config(path)


def _load_node(path: Path) -> object:
    from fedcare.deploy.config import load_site_config

    return load_site_config(path)


def _load_data_site(path: Path) -> object:
    """site.toml of ``fedcare data check``: parsed, then its CSV source read with the options it sets."""
    from fedcare.data.config import load_site_config
    from fedcare.data.connect import check_site

    return check_site(load_site_config(path)).report


def _study_seed(workdir: Path) -> bytes:
    return (Path(__file__).resolve().parents[2] / "examples" / "heart-study" / "study.toml").read_bytes()


def _load_study(path: Path) -> object:
    from fedcare.study.spec import load_study

    return load_study(path)


def _site_seed(workdir: Path) -> bytes:
    folder = Path(__file__).resolve().parents[2] / "examples" / "heart-study"
    for name in ("cleveland.csv",):
        shutil.copy(folder / name, workdir / name)
    return (folder / "sites" / "cleveland.toml").read_bytes()


def _load_site(path: Path) -> object:
    from fedcare.study.site import load_site

    return load_site(path)


# -- connectors: FHIR, DICOM, npz --------------------------------------------------------

_FHIR_SITE = """\
[site]
id = "s"
[source]
kind = "fhir"
path = "bundles"
[fhir]
reference_date = "2021-06-01"
[fhir.conditions]
hypertension = ["http://snomed.info/sct|38341003"]
[fhir.observations]
bmi = { code = "39156-5", unit = "kg/m2" }
[schema]
target = "hypertension"
[schema.columns.age]
min = 0
max = 120
[schema.columns.sex]
type = "category"
codes = ["female", "male"]
[schema.columns.bmi]
min = 10
max = 80
[schema.columns.hypertension]
type = "boolean"
"""


def _fhir_seed(workdir: Path) -> bytes:
    """A small valid FHIR R4 bundle with every resource kind the connector reads (Synthea's codes)."""
    patient = {"reference": "urn:uuid:p1"}
    entries = [
        {"fullUrl": "urn:uuid:o1", "resource": {"resourceType": "Organization", "id": "o1", "name": "Hospital"}},
        {
            "fullUrl": "urn:uuid:p1",
            "resource": {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1980-10-28"},
        },
        {
            "fullUrl": "urn:uuid:e1",
            "resource": {
                "resourceType": "Encounter",
                "id": "e1",
                "status": "finished",
                "class": {"code": "AMB"},
                "subject": patient,
                "serviceProvider": {"reference": "urn:uuid:o1"},
            },
        },
        {
            "fullUrl": "urn:uuid:c1",
            "resource": {
                "resourceType": "Condition",
                "id": "c1",
                "subject": patient,
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]},
                "onsetDateTime": "2010-01-01T00:00:00Z",
            },
        },
        {
            "fullUrl": "urn:uuid:b1",
            "resource": {
                "resourceType": "Observation",
                "id": "b1",
                "status": "final",
                "subject": patient,
                "code": {"coding": [{"system": "http://loinc.org", "code": "39156-5"}]},
                "effectiveDateTime": "2020-01-01T00:00:00Z",
                "valueQuantity": {"value": 27.5, "unit": "kg/m2", "code": "kg/m2"},
            },
        },
    ]
    return json.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries}).encode()


def _json_tree(data: bytes, rnd: random.Random, steps: int) -> bytes:
    try:
        return _dumps(mutate_tree(json.loads(data), rnd, steps))
    except ValueError:
        return data


def _decode_fhir(blob: bytes, workdir: Path) -> object:
    """The FHIR connector's reader: a folder with this one bundle, the study's code mapping."""
    from fedcare.data.fhir import read_bundles
    from fedcare.data.schema import CheckReport

    folder = workdir / "bundles"
    folder.mkdir(exist_ok=True)
    (folder / "bundle.json").write_bytes(blob)
    return read_bundles(folder, _fhir_mapping(), CheckReport(), needs=frozenset({"age", "sex", "bmi"}))


@functools.cache
def _fhir_mapping() -> object:
    import tomllib

    from fedcare.data.fhir import FhirMapping

    return FhirMapping.from_mapping(tomllib.loads(_FHIR_SITE)["fhir"])


_DICOM_SITE = """\
[site]
id = "r"
[source]
kind = "dicom"
path = "images"
labels = "labels.csv"
size = [16, 16]
[schema]
target = "label"
[schema.columns.label]
type = "category"
codes = [0, 1]
"""


def _dicom_seed(workdir: Path) -> bytes:
    """A small valid DICOM file (16x16 MR slice, 12 of 16 bits, windowed, rescaled): cheap to parse."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["fedcare-fuzz"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "MR", "fuzz"
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth, ds.RescaleSlope, ds.RescaleIntercept = 600, 1600, 1, 0
    ds.PixelData = np.arange(256, dtype=np.uint16).reshape(16, 16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _decode_dicom(blob: bytes, workdir: Path) -> object:
    """The DICOM connector's reader on one file: parse, decode pixels, normalise, resize."""
    import warnings

    import pandas as pd

    from fedcare.data.dicom import read_dicom_images
    from fedcare.data.schema import CheckReport

    folder = workdir / "images"
    folder.mkdir(exist_ok=True)
    (folder / "image.dcm").write_bytes(blob)
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # pydicom logs a warning per oddity of a damaged file
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ... and warns about others before refusing them
            table = pd.DataFrame({"file": ["image.dcm"], "label": ["1"]})
            return read_dicom_images(folder, table, CheckReport(), file_column="file", size=(16, 16), window=None)
    finally:
        logger.setLevel(level)


_NPZ_SITE = """\
[site]
id = "x"
[source]
kind = "npz"
path = "images.npz"
[schema]
target = "label"
[schema.columns.label]
type = "category"
codes = [0, 1]
"""


def _npz_seed(workdir: Path) -> bytes:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 3), ("val", 1), ("test", 2)):
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(n, 4, 4), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, size=(n, 1), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # stored, not deflated: byte edits reach the .npy headers
    (workdir / "npz.toml").write_text(_NPZ_SITE)
    return buf.getvalue()


def _decode_npz(blob: bytes, workdir: Path) -> object:
    """The MedMNIST .npz reader (allow_pickle=False) on the damaged archive."""
    from fedcare.data.arrays import read_medmnist
    from fedcare.data.schema import CheckReport

    path = workdir / "images.npz"
    path.write_bytes(blob)
    return read_medmnist(path, CheckReport(), target="label")


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("serde.decode_state", _state_seed, _decode_state, _safetensors_tree),
        Target("transport.frames", _frames_seed, _decode_frames, _frames_tree),
        Target("store.site_memory", _memory_seed, _decode_memory, _safetensors_tree),
        Target("store.audit", _audit_seed, _decode_audit, _audit_tree),
        Target("config.simulate_toml", _toml_seed(_SIMULATE_TOML), _toml_decoder(_load_simulate), _toml_tree),
        Target("config.server_toml", _toml_seed(_SERVER_TOML), _toml_decoder(_load_server), _toml_tree),
        Target("config.node_toml", _toml_seed(_NODE_TOML), _toml_decoder(_load_node), _toml_tree),
        Target("config.data_site_toml", _toml_seed(_DATA_SITE_TOML), _toml_decoder(_load_data_site), _toml_tree),
        Target("config.study_toml", _study_seed, _toml_decoder(_load_study), _toml_tree),
        Target("config.site_toml", _site_seed, _toml_decoder(_load_site), _toml_tree),
        Target("data.fhir", _fhir_seed, _decode_fhir, _json_tree),
        Target("data.dicom", _dicom_seed, _decode_dicom),
        Target("data.npz", _npz_seed, _decode_npz),
    )
}


def scratch_dir() -> Path:
    """A fresh folder for the decoders' files: in RAM (``/dev/shm``) where the system has it.

    Each case writes a file or two; on a disk file system rewriting a file costs
    milliseconds (the kernel flushes a truncated file), which would dominate the run.
    """
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="fedcare-fuzz-", dir=base))


def run_case(target: Target, blob: bytes, workdir: Path) -> str | None:
    """Decode one input; None if it was accepted or refused with a FedcareError, else the escape."""
    try:
        target.decode(blob, workdir)
    except FedcareError:
        return None
    except Exception as exc:  # noqa: BLE001 - an escape is what we are looking for
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return None


def escapes(target: Target, seeds: Sequence[int], workdir: Path, seed_blob: bytes) -> list[tuple[int, str]]:
    """Run one mutated case per seed; return (seed, escape) for each leak."""
    out = []
    for s in seeds:
        blob = target.mutate(seed_blob, random.Random(s))
        problem = run_case(target, blob, workdir)
        if problem:
            out.append((s, problem))
    return out
