"""Readers of one input file each, streaming: JSON lines (plain, gzip, zstandard), Parquet, the
Arrow files of a Hugging Face ``datasets`` directory (``save_to_disk`` output), a folder of .txt.

Every reader yields ``(name, values)`` with one string per requested field, in file order, and
holds at most one line or one record batch in memory. A bad file ends in a ``CorpusError`` that
names the file and, where it applies, the byte offset (of the decompressed stream for compressed
files) or the line/row, and what to do.
"""
from __future__ import annotations

import gzip
import io
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence, Tuple

from ..errors import CorpusError

# suffix -> format; the longest matching suffix wins (".jsonl.gz" before ".gz")
FORMATS = {".jsonl": "jsonl", ".jsonl.gz": "jsonl.gz", ".jsonl.zst": "jsonl.zst",
           ".parquet": "parquet", ".arrow": "arrow"}
BATCH_ROWS = 1024          # Parquet/Arrow rows decoded at a time: bounds the reader's memory


@dataclass(frozen=True)
class Source:
    """One unit of input: a file, or a folder of .txt files (``fmt`` 'txt')."""
    path: Path
    fmt: str
    name: str = ""           # how reports name it (default: the path)

    @property
    def label(self) -> str:
        return self.name or str(self.path)

    def fingerprint(self) -> dict:
        """What identifies this input's contents cheaply (a changed file is re-tokenized)."""
        if self.fmt == "txt":
            files = sorted(self.path.rglob("*.txt"))
            return {"files": len(files), "bytes": sum(f.stat().st_size for f in files),
                    "mtime_ns": max((f.stat().st_mtime_ns for f in files), default=0)}
        st = self.path.stat()
        return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}

    def size(self) -> int:
        return self.fingerprint()["bytes"]


def format_of(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return FORMATS[suffix]
    raise CorpusError(f"input file {path}: unknown format; expected one of "
                      f"{', '.join(sorted(FORMATS))}, a folder of .txt or a Hugging Face "
                      f"datasets directory")


def check_source(src: Source, fields: Sequence[str]) -> None:
    """Cheap checks before any work: the file opens; Parquet/Arrow files have the columns, as text."""
    if src.fmt == "txt":
        return
    try:
        with src.path.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise CorpusError(f"cannot read input file {src.path}: {exc.strerror or exc}") from None
    if src.fmt in ("parquet", "arrow"):
        with _table_reader(src) as (schema, _):
            _check_columns(src.path, schema, fields)


def iter_source(src: Source, fields: Sequence[str]) -> Iterator[Tuple[str, Tuple[str, ...]]]:
    if src.fmt == "txt":
        yield from _iter_txt(src.path)
    elif src.fmt in ("parquet", "arrow"):
        yield from _iter_table(src, fields)
    else:
        yield from _iter_jsonl(src, fields)


def _values(where: str, values, fields: Sequence[str]) -> Tuple[str, ...]:
    """Every field text; the last one (text, or response) non-empty."""
    for f, v in zip(fields, values):
        if not isinstance(v, str):
            raise CorpusError(f"{where}: field \"{f}\" is {type(v).__name__}, expected text")
    if not values[-1].strip():
        raise CorpusError(f"{where}: empty \"{fields[-1]}\"; remove the record")
    return tuple(values)


def _utf8(data: bytes, path: Path, base: int, where: str) -> str:
    """Decode, or name the file and the byte offset (``base`` + position in ``data``)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path}: byte {base + exc.start} {where}is not valid UTF-8; convert "
                          f"the file to UTF-8 (e.g. iconv -t utf-8)") from None


# ---- JSON lines -------------------------------------------------------------------------------

def _open_stream(src: Source):
    raw = src.path.open("rb")
    if src.fmt == "jsonl.gz":
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw
    if src.fmt == "jsonl.zst":
        import zstandard
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True),
                                 1 << 20), raw
    return raw, raw


def _decode_errors():
    import zstandard
    return (gzip.BadGzipFile, EOFError, zlib.error, zstandard.ZstdError)


def _iter_jsonl(src: Source, fields: Sequence[str]):
    what = "of the decompressed stream " if src.fmt != "jsonl" else ""
    wanted = " and ".join(f'"{f}"' for f in fields)
    try:
        stream, raw = _open_stream(src)
    except OSError as exc:
        raise CorpusError(f"cannot read input file {src.path}: {exc.strerror or exc}") from None
    offset, lineno = 0, 0
    with raw, stream:
        lines = iter(stream)
        while True:
            try:
                line = next(lines)
            except StopIteration:
                return
            except _decode_errors() as exc:
                raise CorpusError(f"{src.path}: corrupt or truncated {src.fmt.split('.')[-1]} data "
                                  f"after byte {offset} {what}(line {lineno + 1}): {exc}; "
                                  f"re-create or remove the file") from None
            lineno += 1
            start, offset = offset, offset + len(line)
            text = _utf8(line, src.path, start, f"{what}(line {lineno}) ")
            if not text.strip():
                continue
            where = f"{src.path}:{lineno}"
            try:
                row = json.loads(text)
                values = [row[f] for f in fields]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise CorpusError(f"{where}: expected a JSON object with {wanted} fields") from None
            yield f"{src.path.name}:{lineno}", _values(where, values, fields)


# ---- Parquet and Arrow ------------------------------------------------------------------------

class _table_reader:
    """Context manager: (schema, iterator of record batches) of a Parquet or Arrow stream file."""

    def __init__(self, src: Source):
        self.src, self.fh = src, None

    def __enter__(self):
        import pyarrow as pa
        import pyarrow.parquet as pq
        try:
            if self.src.fmt == "parquet":
                pf = pq.ParquetFile(str(self.src.path))
                self.fh = pf
                return pf.schema_arrow, lambda cols: pf.iter_batches(BATCH_ROWS, columns=list(cols))
            self.fh = pa.memory_map(str(self.src.path))       # zero-copy: pages, not the file
            try:
                reader = pa.ipc.open_stream(self.fh)
            except pa.ArrowInvalid:
                self.fh.seek(0)
                reader = pa.ipc.open_file(self.fh)
                return reader.schema, lambda cols: (reader.get_batch(i).select(cols)
                                                    for i in range(reader.num_record_batches))
            return reader.schema, lambda cols: (b.select(cols) for b in reader)
        except (pa.ArrowException, OSError) as exc:
            raise CorpusError(f"{self.src.path} is not a readable {self.src.fmt} file ({exc}); "
                              f"re-create or remove it") from None

    def __exit__(self, *exc):
        close = getattr(self.fh, "close", None)
        if close:
            close()


def _check_columns(path: Path, schema, fields: Sequence[str]) -> None:
    import pyarrow as pa
    names = schema.names
    for f in fields:
        if f not in names:
            raise CorpusError(f"{path} has no column \"{f}\" (its columns: {', '.join(names)}); "
                              f"choose the text column with --text-column (or --prompt-column/"
                              f"--response-column)")
        t = schema.field(f).type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)):
            raise CorpusError(f"{path}: column \"{f}\" holds {t}, expected text (string); the "
                              f"input files do not share one schema, or choose another column")


def _iter_table(src: Source, fields: Sequence[str]):
    import pyarrow as pa
    with _table_reader(src) as (schema, batches):
        _check_columns(src.path, schema, fields)
        row = 0
        try:
            for batch in batches(fields):
                columns = [batch.column(i).to_pylist() for i in range(len(fields))]
                for values in zip(*columns):
                    yield f"{src.path.name}:{row}", _values(f"{src.path} row {row}", values, fields)
                    row += 1
        except (pa.ArrowException, OSError) as exc:
            raise CorpusError(f"{src.path}: unreadable after row {row} ({exc}); re-create or "
                              f"remove the file") from None


# ---- a folder of .txt files --------------------------------------------------------------------

def _iter_txt(root: Path):
    for f in sorted(root.rglob("*.txt")):
        try:
            data = f.read_bytes()
        except OSError as exc:
            raise CorpusError(f"cannot read input file {f}: {exc.strerror or exc}") from None
        text = _utf8(data, f, 0, "")
        if not text.strip():
            raise CorpusError(f"{f}: empty document; remove the file or give it text")
        yield str(f.relative_to(root)), (text,)
