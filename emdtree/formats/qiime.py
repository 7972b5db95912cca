"""QIIME 2 artifacts (``.qza``) read without QIIME 2: feature tables and rooted phylogenies.

An artifact is a zip archive holding one folder named by the artifact's UUID,
with ``metadata.yaml`` (its semantic ``type``), ``VERSION`` and ``data/``: a
``FeatureTable[Frequency]`` keeps ``data/feature-table.biom`` (BIOM v2.1,
HDF5) and a ``Phylogeny[Rooted]`` keeps ``data/tree.nwk``. The provenance
folder beside ``data/`` is not read.
"""

from __future__ import annotations

import io
import pathlib
import re
import zipfile
from typing import Any

ZIP_MAGIC = b"PK\x03\x04"

#: The artifact types read as count tables. Relative frequencies are accepted:
#: weighted UniFrac and ``normalize="l1"`` divide every sample by its total anyway.
TABLE_TYPES = ("FeatureTable[Frequency]", "FeatureTable[RelativeFrequency]")
#: The artifact types read as trees: UniFrac needs a root.
TREE_TYPES = ("Phylogeny[Rooted]",)

_ADVICE = {
    "Phylogeny[Unrooted]": "root it first, e.g. with 'qiime phylogeny midpoint-root'",
    "FeatureTable[PresenceAbsence]": "weighted UniFrac needs counts or frequencies",
}


def is_artifact(path: str | pathlib.Path) -> bool:
    """Whether ``path`` names a QIIME 2 artifact: a ``.qza`` suffix, or a zip file's first bytes."""
    path = pathlib.Path(path)
    if path.suffix.lower() == ".qza":
        return True
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == ZIP_MAGIC
    except OSError:
        return False


def _artifact_type(text: str) -> str | None:
    for line in text.splitlines():
        found = re.match(r"\s*type\s*:\s*(.*?)\s*$", line)
        if found:
            return found.group(1).strip("'\"")
    return None


def _read_member(path: pathlib.Path, expected: tuple[str, ...], member: str, what: str) -> bytes:
    """The bytes of ``<uuid>/data/<member>`` of the artifact ``path`` whose type is one of ``expected``."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ValueError(f"{str(path)!r} is not a QIIME 2 artifact: not a zip archive") from None
    with archive:
        names = archive.namelist()
        roots = sorted({name.split("/", 1)[0] for name in names if "/" in name})
        metadata = [f"{root}/metadata.yaml" for root in roots if f"{root}/metadata.yaml" in names]
        if len(roots) != 1 or not metadata:
            raise ValueError(f"{str(path)!r} is not a QIIME 2 artifact: no <uuid>/metadata.yaml at the top "
                             "of the archive")
        root = roots[0]
        found = _artifact_type(archive.read(metadata[0]).decode("utf-8", errors="replace"))
        if found is None:
            raise ValueError(f"{str(path)!r}: its metadata.yaml names no artifact type")
        if found not in expected:
            advice = _ADVICE.get(found)
            raise ValueError(f"{str(path)!r} is a {found} artifact, but {what} must be "
                             f"{' or '.join(expected)}" + (f": {advice}" if advice else ""))
        data = f"{root}/data/{member}"
        if data not in names:
            held = sorted(name[len(root) + 6:] for name in names if name.startswith(f"{root}/data/"))
            raise ValueError(f"{str(path)!r} ({found}) has no data/{member} (data/ holds "
                             f"{', '.join(held) or 'nothing'})")
        try:
            return archive.read(data)
        except (zipfile.BadZipFile, EOFError, ValueError) as exc:
            raise ValueError(f"cannot read data/{member} in {str(path)!r}: {exc}") from None


def read_table_artifact(path: str | pathlib.Path) -> tuple[list[str], list[str], Any]:
    """Sample ids, feature ids and the sparse (samples, features) counts of a feature-table artifact."""
    path = pathlib.Path(path)
    try:
        import biom
        import h5py
    except ImportError:
        raise ImportError(f"reading the feature table {str(path)!r} (BIOM inside) needs the biom-format "
                          "package: pip install emdtree[biom]") from None
    data = _read_member(path, TABLE_TYPES, "feature-table.biom", "a count table")
    try:
        with h5py.File(io.BytesIO(data), "r") as fh:
            table = biom.Table.from_hdf5(fh)
        matrix = table.matrix_data.T.tocsr()  # samples x features
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # biom-format and h5py report damage in many types
        text = str(exc).strip().splitlines()
        raise ValueError(f"cannot read the BIOM table in {str(path)!r}: "
                         f"{text[0] if text else type(exc).__name__}") from None
    return [str(s) for s in table.ids(axis="sample")], [str(f) for f in table.ids(axis="observation")], matrix


def read_tree_newick(path: str | pathlib.Path) -> str:
    """The Newick text of a ``Phylogeny[Rooted]`` artifact."""
    path = pathlib.Path(path)
    data = _read_member(path, TREE_TYPES, "tree.nwk", "a tree")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"data/tree.nwk in {str(path)!r} is not UTF-8 text (byte {exc.start})") from None
