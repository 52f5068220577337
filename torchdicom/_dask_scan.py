"""Distributed indexing on Dask: partitions listed, parsed and written by the workers.

``scan(source, executor="dask" | client, cache=folder)`` lands here. The client lists
only folders, ``partition_depth`` levels deep (fsspec URLs: prefixes), and turns them
into :class:`Partition` s:

* ``tree``: a folder at that depth, walked whole by a worker (:func:`get_dicom_files`);
* ``flat``: the files directly in a shallower folder (the root included);
* ``files``: a slice of an explicit list of files (the client holds those anyway);
* ``remote-tree`` / ``remote-flat``: the same for a prefix of an fsspec URL, listed on the
  worker with :func:`torchdicom.sources.remote.find` / ``fs.ls``.

So ten million paths never sit in the client: each worker lists its partition, parses its
headers in-process (:func:`torchdicom._indextable._scan_paths`) and writes rows and errors as
one parquet part, atomically (``part-<id>.parquet``, :func:`torchdicom._atomic.atomic_write`),
and returns a few numbers. The union of the partitions is what :func:`get_dicom_files`
(or ``fs.find``) finds under the root, so the index equals a local :func:`scan` row for row,
whatever the partitioning.

Each part's parquet metadata holds its partition id, the salt fingerprint and the
*listing fingerprint* of the partition: file count, total size, newest mtime and a digest
of every (path, size, mtime) — remote: (URL, size, ETag). A re-run lists the partition
again and skips it when the part is there with the same fingerprint, schema version and
salt; otherwise it rescans it, reusing the part's rows of unchanged files. Keeping this in
the part (not only in the manifest) means a run that was interrupted keeps every partition
it finished.

When every partition is done the client writes ``manifest.json`` (format, schema version,
salt fingerprint, and per partition: id, kind, location, part file, rows, errors,
fingerprint) and removes parts of partitions no longer listed (another partitioning, a
deleted folder): an index folder holds one source, written by one scan at a time.
:func:`read_partitioned` (``DicomIndex.read(folder)``) reads the parts the manifest names.

Partitions are folders, so their sizes follow the archive's layout: a flat folder of a
million files is one partition, parsed by one worker (give such a source as a list, cut
into ``partition_files`` slices, or choose a ``partition_depth`` that reaches folders of
thousands of files).

The salt is resolved once, on the client, and travels in every task, so patient hashes
(and the patient-level splits made from them) are the same on every node whatever each
node's environment says. It travels in the task graph: on a cluster across machines, use
Dask's TLS. A task that raises is retried ``retries`` times; a worker that dies is
replaced and its partition rescheduled by the scheduler (``distributed.scheduler.
allowed-failures`` times). A bad file is a row of ``errors`` and never fails its task.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from torchdicom._atomic import write_text_atomic
from torchdicom._indextable import (
    _SCHEMA_VERSION,
    _empty_frame,
    _index_info,
    _remote_meta,
    _rows_table,
    _scan_paths,
    _split_table,
    _stat,
    _write_table_atomic,
)
from torchdicom._privacy import salt_fingerprint
from torchdicom.errors import DicomFileNotFoundError, TorchDicomError
from torchdicom.io.dicomfile import _short

__all__ = ["MANIFEST", "Partition", "dask_scan", "list_partitions", "read_partitioned"]

#: The manifest of a partitioned index folder.
MANIFEST = "manifest.json"
_FORMAT = "torchdicom partitioned index"
_MANIFEST_VERSION = 1
_PART_PREFIX = "part-"

log = logging.getLogger(__name__)

PartitionKind = Literal["tree", "flat", "files", "remote-tree", "remote-flat"]


@dataclass(frozen=True)
class Partition:
    """One unit of work: what a worker lists, parses and writes as one parquet part.

    Attributes:
        kind: ``tree`` (a folder, walked whole), ``flat`` (the files directly in a
            folder), ``files`` (the paths in ``files``), ``remote-tree`` /
            ``remote-flat`` (the same for a URL prefix).
        location: the folder or URL prefix; ``""`` for ``files``.
        files: the paths of a ``files`` partition, else empty.
    """

    kind: PartitionKind
    location: str
    files: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        """16 hex digits naming the partition (and its part file), stable across runs."""
        digest = hashlib.sha256(f"{self.kind}\0{self.location}\0".encode("utf-8", "surrogatepass"))
        for path in self.files:
            digest.update(path.encode("utf-8", "surrogatepass") + b"\n")
        return digest.hexdigest()[:16]

    @property
    def part_name(self) -> str:
        return f"{_PART_PREFIX}{self.id}.parquet"

    def describe(self) -> str:
        """The partition for messages and the manifest (URLs with credentials scrubbed)."""
        if self.kind == "files":
            first = _display(self.files[0]) if self.files else "-"
            return f"partition {self.id} ({len(self.files)} files from {first})"
        return f"partition {self.id} ({self.kind} {_display(self.location)})"


def _display(path: str) -> str:
    from torchdicom.sources.remote import display, is_remote

    return display(path) if is_remote(path) else path


# --------------------------------------------------------------------------- the client's listing
def list_partitions(
    source: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    depth: int = 1,
    partition_files: int = 4096,
) -> list[Partition]:
    """The partitions of ``source``, listing folders (or prefixes) ``depth`` levels only.

    Args:
        source: a folder, a file, an fsspec URL, or a list of files / URLs.
        depth: folder levels listed here; 0: the whole source is one partition.
        partition_files: files per partition of a list.

    Returns:
        The partitions, in listing order; their union is what :func:`scan` would index.

    Raises:
        DicomFileNotFoundError: a local ``source`` that does not exist.
        ValueError: ``depth`` < 0 or ``partition_files`` < 1.
    """
    from torchdicom.sources.remote import is_remote, local_path

    if depth < 0:
        raise ValueError(f"partition_depth must be >= 0. Got: {depth}")
    if partition_files < 1:
        raise ValueError(f"partition_files must be >= 1. Got: {partition_files}")
    if isinstance(source, str) and is_remote(source):
        return _remote_partitions(source, depth)
    if isinstance(source, str):
        source = local_path(source)
    if isinstance(source, str | os.PathLike):
        root = Path(source)
        if root.is_dir():
            return _local_partitions(os.path.abspath(root), depth)
        if not root.exists():
            raise DicomFileNotFoundError(root, "no such file or directory")
        return [Partition("files", "", (os.path.abspath(root),))]
    if isinstance(source, Iterable):
        # An explicit list is in the client's memory already: slices of it, as scan() takes it.
        paths = [
            f if is_remote(f) else os.path.abspath(local_path(os.fspath(f)))
            for f in (os.fspath(s) for s in source)
        ]
        return [
            Partition("files", "", tuple(paths[i : i + partition_files]))
            for i in range(0, len(paths), partition_files)
        ]
    raise TypeError(
        f"scan() takes a directory, a file or a list of files. Got: {type(source).__name__}"
    )


def _local_partitions(root: str, depth: int) -> list[Partition]:
    return _level_partitions(root, depth, _subfolders, "flat", "tree")


def _level_partitions(
    root: str, depth: int, children: Callable[[str], list[str]], flat: str, tree: str
) -> list[Partition]:
    """Folders (or prefixes) down to ``depth``: those above it are ``flat`` partitions (their
    own files only), those at it ``tree`` partitions (walked whole on a worker)."""
    if depth == 0:
        return [Partition(tree, root)]
    parts = [Partition(flat, root)]
    level = [root]
    for d in range(1, depth + 1):
        deeper = []
        for folder in level:
            for sub in children(folder):
                if d == depth:
                    parts.append(Partition(tree, sub))
                else:
                    parts.append(Partition(flat, sub))
                    deeper.append(sub)
        level = deeper
    return parts


def _subfolders(folder: str) -> list[str]:
    """The folders :func:`get_dicom_files` descends into from ``folder``: not hidden,
    readable or not (an unreadable one is an empty partition, as the walk skips it)."""
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError:
        return []
    out = []
    for entry in entries:
        try:
            if entry.is_dir() and not entry.name.startswith("."):
                out.append(entry.path)
        except OSError:
            continue
    return sorted(out)


def _remote_partitions(url: str, depth: int) -> list[Partition]:
    from torchdicom.sources.remote import _call, filesystem

    fs = filesystem(url)
    if _call(url, "stat", fs.isfile, url, fs=fs):
        return [Partition("files", "", (url,))]
    return _level_partitions(
        url,
        depth,
        lambda prefix: _remote_entries(prefix, "directory"),
        "remote-flat",
        "remote-tree",
    )


def _remote_entries(prefix: str, kind: Literal["file", "directory"]) -> list[str]:
    """The URLs of the objects (``"file"``) or sub-prefixes directly under ``prefix``."""
    from torchdicom.sources.remote import _call, filesystem, policy

    fs = filesystem(prefix)
    try:
        entries = _call(
            prefix, "listing", fs.ls, prefix, detail=True, fs=fs, timeout_s=policy.list_timeout_s
        )
    except DicomFileNotFoundError:
        return []
    own = fs._strip_protocol(prefix).rstrip("/")
    return sorted(
        e["name"] if "://" in e["name"] else fs.unstrip_protocol(e["name"])
        for e in entries
        # Some stores list a prefix's own marker object among its entries.
        if e.get("type") == kind and fs._strip_protocol(e["name"]).rstrip("/") != own
    )


# --------------------------------------------------------------------------- the worker's task
def _list_partition(part: Partition) -> list[str]:
    """The files of a partition, listed where the task runs, sorted."""
    from torchdicom.io.files import get_dicom_files
    from torchdicom.sources.remote import find, looks_like_dicom

    if part.kind == "files":
        return sorted(part.files)
    if part.kind in ("tree", "flat"):
        if not os.path.isdir(part.location):
            return []  # gone since the client listed it: nothing to index, as scan() sees it
        found = get_dicom_files(part.location, recurse=part.kind == "tree")
        return [os.path.abspath(f) for f in found]
    if part.kind == "remote-tree":
        try:
            return sorted(looks_like_dicom(find(part.location, progress=False)))
        except DicomFileNotFoundError:
            return []
    return sorted(looks_like_dicom(_remote_entries(part.location, "file")))


def _fingerprint(paths: list[str]) -> dict[str, Any]:
    """Count, total size, newest mtime and a digest of every (path, size, mtime or ETag)."""
    from torchdicom.sources.remote import is_remote

    remote = _remote_meta([p for p in paths if is_remote(p)], 4)
    digest = hashlib.sha256()
    total, newest = 0, -1
    for p in paths:
        if p in remote:
            size, etag = remote[p]
            stamp: Any = etag
        else:
            size, stamp = _stat(p)
            newest = max(newest, stamp)
        total += max(size, 0)
        digest.update(f"{p}\0{size}\0{stamp}\n".encode("utf-8", "surrogatepass"))
    return {
        "count": len(paths),
        "total_size": total,
        "max_mtime_ns": newest,
        "digest": digest.hexdigest()[:32],
    }


def _part_info(target: Path) -> dict[str, Any] | None:
    """The torchdicom metadata of a written part; None when missing, damaged or of another
    schema version (any of which means: rescan)."""
    import pyarrow.parquet as pq

    try:
        return _index_info(target, pq.read_schema(target).metadata)
    except FileNotFoundError:
        return None
    # pyarrow's ArrowInvalid (a torn footer, not parquet) is a ValueError.
    except (OSError, ValueError, TorchDicomError) as exc:
        log.warning("%s: rescanned: %s", target, _short(exc))
        return None


def index_partition(
    part: Partition,
    out: str,
    salt: str,
    storage_options: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Worker task: list ``part``, parse its headers unless its part is still valid, write it.

    Args:
        part: the partition.
        out: the partitioned index folder (reachable from this worker).
        salt: the key of the patient hashes (resolved on the client).
        storage_options: per bucket (``s3://bucket``, see
            :func:`torchdicom.sources.remote.bucket_root`), registered in this process first.

    Returns:
        The partition's manifest entry: id, kind, location, part file, rows, errors,
        fingerprint, and ``reused`` (the part was valid and left as it was).

    Raises:
        TorchDicomError: the partition could not be listed or its part not written,
            naming the partition and the reason (a bad *file* is an ``errors`` row).
    """
    from torchdicom.sources.remote import configure

    for bucket, opts in (storage_options or {}).items():
        configure(bucket, opts)
    try:
        paths = _list_partition(part)
    except TorchDicomError as exc:
        raise TorchDicomError(part.describe(), f"listing failed: {exc}") from None
    except OSError as exc:
        raise TorchDicomError(part.describe(), f"listing failed: {_short(exc)}") from None
    fingerprint = _fingerprint(paths)
    target = Path(out) / part.part_name
    entry: dict[str, Any] = {
        "id": part.id,
        "kind": part.kind,
        "location": _display(part.location),
        "file": part.part_name,
        "fingerprint": fingerprint,
    }
    info = _part_info(target)
    if (
        info is not None
        and info.get("partition") == part.id
        and info.get("fingerprint") == fingerprint
        and info.get("salt") == salt_fingerprint(salt)
    ):
        return {**entry, "rows": info["rows"], "errors": info["errors"], "reused": True}
    # A stale part still holds the rows of its unchanged files: reuse them by (size, mtime).
    rows, errors, _ = _scan_paths(
        paths,
        workers=0,
        cached_from=target if info is not None else None,
        progress=False,
        salt=salt,
    )
    counts = {"rows": len(rows), "errors": len(errors)}
    extra = {"partition": part.id, "fingerprint": fingerprint, **counts}
    # Straight from the rows to arrow: the worker never needs a DataFrame.
    try:
        _write_table_atomic(_rows_table(rows, errors, salt, extra), target)
    except OSError as exc:
        raise TorchDicomError(
            part.describe(), f"part {target} not written: {_short(exc)}"
        ) from None
    return {**entry, **counts, "reused": False}


# --------------------------------------------------------------------------- running it
def _require_dask() -> None:
    try:
        import dask  # noqa: F401
        import distributed  # noqa: F401
    except ImportError:
        raise ImportError(
            "scan(executor=...) needs dask: pip install 'torchdicom[dask]' (dask[distributed])"
        ) from None


def _current_client() -> Any | None:
    """The ``distributed`` client of this process, if one is running (never starts one)."""
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        return default_client()
    except ValueError:
        return None


def _is_client(obj: Any) -> bool:
    try:
        from distributed import Client
    except ImportError:
        return False
    return isinstance(obj, Client)


def _run_on_client(
    client: Any,
    parts: list[Partition],
    args: tuple[str, str, dict[str, dict[str, Any]] | None],
    retries: int,
    progress: bool,
) -> list[dict[str, Any]]:
    from distributed import as_completed
    from tqdm.auto import tqdm

    run = uuid.uuid4().hex[:8]
    futures = {
        client.submit(
            index_partition,
            part,
            *args,
            key=f"torchdicom-scan-partition-{part.id}-{run}",
            retries=retries,
            pure=False,
        ): part
        for part in parts
    }
    entries: dict[str, dict[str, Any]] = {}
    files = 0
    bar = tqdm(total=len(parts), desc="indexing partitions", unit="part", disable=not progress)
    try:
        for future in as_completed(futures):
            part = futures[future]
            try:
                entry = future.result()
            except TorchDicomError:
                raise
            except Exception as exc:  # KilledWorker: it died allowed-failures times
                raise TorchDicomError(
                    part.describe(), f"failed on the cluster: {_short(exc)}"
                ) from None
            entries[part.id] = entry
            files += entry["rows"] + entry["errors"]
            bar.update(1)
            bar.set_postfix(files=files)
    except BaseException:
        client.cancel(list(futures))
        raise
    finally:
        bar.close()
    return [entries[p.id] for p in parts]


def _run_local_scheduler(
    scheduler: Any,
    parts: list[Partition],
    args: tuple[str, str, dict[str, dict[str, Any]] | None],
) -> list[dict[str, Any]]:
    """The partitions on a dask scheduler without ``distributed`` (``"synchronous"``,
    ``"threads"``, ``"processes"``): no retries there, as there is no worker to lose."""
    import dask

    tasks = [dask.delayed(index_partition, pure=False)(part, *args) for part in parts]
    return list(dask.compute(*tasks, scheduler=scheduler))


def _run(
    executor: str | Any,
    parts: list[Partition],
    args: tuple[str, str, dict[str, dict[str, Any]] | None],
    workers: int | None,
    retries: int,
    progress: bool,
) -> list[dict[str, Any]]:
    if _is_client(executor):
        if workers is not None:
            raise ValueError(
                "workers= sizes the LocalCluster of executor='dask'; a Client brings its"
                f" own workers. Got: workers={workers}"
            )
        return _run_on_client(executor, parts, args, retries, progress)
    if executor != "dask":
        raise ValueError(
            f"executor must be None, 'dask' or a distributed.Client. Got: {executor!r}"
        )
    _require_dask()
    import dask

    # Dask's own precedence: a scheduler set in dask.config (``with dask.config.set(
    # scheduler="synchronous")``) wins over a running client, which sets it to
    # "dask.distributed" while it is open.
    scheduler = dask.config.get("scheduler", None)
    if scheduler not in (None, "dask.distributed", "distributed"):
        return _run_local_scheduler(scheduler, parts, args)
    client = _current_client()
    if client is not None:
        return _run_on_client(client, parts, args, retries, progress)
    from distributed import Client, LocalCluster

    n = (os.cpu_count() or 1) if workers is None else max(1, int(workers))
    # Processes, one thread each: header parsing holds the GIL.
    with (
        LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as own,
    ):
        return _run_on_client(own, parts, args, retries, progress)


def dask_scan(
    source: Any,
    *,
    executor: str | Any,
    out: str | os.PathLike[str] | None,
    workers: int | None,
    progress: bool,
    storage_options: dict[str, Any] | None,
    salt: str,
    partition_depth: int,
    partition_files: int,
    retries: int,
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """:func:`torchdicom.scan` with an ``executor`` (see there for the arguments).

    ``out`` is the partitioned index folder (created); without one, a temporary folder of
    this machine is used and removed (which only a LocalCluster's workers can reach).

    Returns:
        The rows and errors read back from the parts (:func:`read_partitioned`), which
        :func:`torchdicom.scan` wraps into a :class:`~torchdicom.DicomIndex`.

    Raises:
        TorchDicomError: a partition could not be listed or written, or failed on the
            cluster (its worker died too often), naming the partition.
    """
    from torchdicom.sources.remote import bucket_root, configure, is_remote

    if retries < 0:
        raise ValueError(f"retries must be >= 0. Got: {retries}")
    options: dict[str, dict[str, Any]] | None = None
    if storage_options is not None:
        if not isinstance(source, str | os.PathLike):
            source = [os.fspath(s) for s in source]  # a generator is read once, here
        urls = [os.fspath(source)] if isinstance(source, str | os.PathLike) else source
        # Per bucket, as scan() registers them: each task registers them again on its worker.
        options = {bucket_root(u): dict(storage_options) for u in urls if is_remote(u)}
        for bucket in options:
            configure(bucket, storage_options)
    parts = list_partitions(source, partition_depth, partition_files)
    with contextlib.ExitStack() as stack:
        if out is None:
            out = stack.enter_context(tempfile.TemporaryDirectory(prefix="torchdicom-index-"))
        folder = Path(out)
        if folder.exists() and not folder.is_dir():
            raise TorchDicomError(
                folder, "executor= writes a partitioned index: cache must be a folder"
            )
        folder.mkdir(parents=True, exist_ok=True)
        entries = _run(
            executor, parts, (os.path.abspath(folder), salt, options), workers, retries, progress
        )
        _write_manifest(folder, source, entries, salt, partition_depth)
        return read_partitioned(folder)


def _write_manifest(
    folder: Path, source: Any, entries: list[dict[str, Any]], salt: str, depth: int
) -> None:
    """The manifest, then the removal of parts (and torn temporaries) it does not name."""
    manifest = {
        "format": _FORMAT,
        "manifest_version": _MANIFEST_VERSION,
        "schema_version": _SCHEMA_VERSION,
        "salt": salt_fingerprint(salt),
        "source": _display(os.fspath(source))
        if isinstance(source, str | os.PathLike)
        else "a list of files",
        "partition_depth": depth,
        "rows": sum(e["rows"] for e in entries),
        "errors": sum(e["errors"] for e in entries),
        "partitions": [{k: v for k, v in e.items() if k != "reused"} for e in entries],
    }
    write_text_atomic(folder / MANIFEST, json.dumps(manifest, indent=1), mode=0o600)
    named = {e["file"] for e in entries}
    for path in folder.iterdir():
        stale = path.name.startswith(_PART_PREFIX) and path.name not in named
        # .part-….parquet.<random>.tmp: left by a worker killed while writing.
        torn = path.name.startswith("." + _PART_PREFIX) and path.name.endswith(".tmp")
        if stale or torn:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def read_partitioned(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The rows and errors of a partitioned index folder (its manifest's parts), both sorted
    by path, which :meth:`torchdicom.DicomIndex.read` wraps (errors None: no parts).

    Raises:
        TorchDicomError: no manifest (the scan did not finish), another format or schema
            version, or a part that is missing, damaged or not the manifest's.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TorchDicomError(
            folder,
            f"no {MANIFEST}: not a partitioned index, or its scan did not finish"
            " (run it again: finished partitions are kept)",
        ) from None
    except (OSError, ValueError) as exc:
        raise TorchDicomError(folder / MANIFEST, f"damaged manifest: {_short(exc)}") from None
    if manifest.get("format") != _FORMAT:
        raise TorchDicomError(folder / MANIFEST, "not a torchdicom partitioned index manifest")
    if manifest.get("schema_version") != _SCHEMA_VERSION:
        raise TorchDicomError(
            folder,
            f"index schema version {manifest.get('schema_version')} is not"
            f" {_SCHEMA_VERSION}: rescan",
        )
    tables = []
    for entry in manifest["partitions"]:
        path = folder / entry["file"]
        try:
            table = pq.read_table(path)
        except FileNotFoundError:
            raise DicomFileNotFoundError(
                path, f"part of partition {entry['id']} ({entry['location']}) is missing"
            ) from None
        except Exception as exc:
            raise TorchDicomError(path, f"part is damaged or not parquet: {_short(exc)}") from None
        info = _index_info(path, table.schema.metadata)
        if info.get("partition") != entry["id"] or info.get("salt") != manifest["salt"]:
            raise TorchDicomError(
                path, "part was rewritten after the manifest (another scan?): rescan"
            )
        tables.append(table.replace_schema_metadata(None))
    if not tables:
        return _empty_frame(), None
    # Parts share the fixed schema of _rows_table; "permissive" also takes string next to
    # large_string, and null next to a type, should a part come from another pyarrow.
    both = pa.concat_tables(tables, promote_options="permissive")
    return _split_table(both)
