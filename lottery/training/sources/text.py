"""Text for language models, tokenised byte-level (256 symbols: nothing to download or train):
``data=text data.root=FILE_OR_FOLDER`` reads a local text file or a folder of them,
``data=hf_text`` a data set of the Hugging Face hub through the ``datasets`` library (WikiText,
TinyStories, ...; or a ``datasets`` builder on local files), and ``data=synthetic_text`` generates a
small language with learnable structure (for tests and smoke runs).

Documents are the files of a folder, or the paragraphs of a single file (split at blank lines).
The test split is held out by document: a seeded draw of documents, about ``data.test_fraction``
of the bytes, never seen in training. Each split's documents are joined (a blank line between
them) and cut into non-overlapping windows of ``data.seq_len + 1`` bytes: a sequence's inputs
and its next tokens. ``data.train_size`` / ``test_size`` / ``val_size`` count sequences.
"""

from __future__ import annotations

import functools
import glob
import hashlib
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np

from lottery.config import DataConfig, bad_value, opt
from lottery.errors import LotteryError, one_line
from lottery.training.sources.base import SOURCES, Arrays, Source

SYMBOLS = [f"byte{i:02x}" for i in range(256)]  # the vocabulary: one symbol per byte value
SUFFIXES = (".txt", ".md", ".rst", ".text")  # the files of a folder that are read as documents
SEPARATOR = b"\n\n"
SPLIT_SEED = 0  # which documents are held out: part of the data's identity, the same for every trial seed


@dataclass
class TextSettings(DataConfig):
    root: Optional[str] = opt(None, "a text file (its paragraphs are the documents) or a folder of .txt/.md/.rst "
                                    "files (each one a document), read as UTF-8 bytes")
    include: Optional[str] = opt(None, "a folder's files to read, as a glob (e.g. usr_*.txt); None: every "
                                       ".txt/.md/.rst/.text file below it")
    seq_len: int = opt(128, "tokens (bytes) per sequence; each predicts its next token at every position")
    test_fraction: float = opt(0.1, "share of the text's bytes, in whole documents, held out as the test split")


@dataclass
class SyntheticTextSettings(DataConfig):
    seq_len: int = opt(64, "tokens (bytes) per sequence")
    test_fraction: float = opt(0.1, "share of the generated documents held out as the test split")
    documents: int = opt(2000, "generated documents (about 250 bytes each)")


def windows(documents: list[bytes], seq_len: int) -> np.ndarray:
    """The documents joined and cut into non-overlapping windows of ``seq_len + 1`` bytes (the last
    partial window is dropped)."""
    stream = np.frombuffer(SEPARATOR.join(documents), dtype=np.uint8)
    n = len(stream) // (seq_len + 1)
    return stream[:n * (seq_len + 1)].reshape(n, seq_len + 1).copy()


def held_out(documents: list[bytes], fraction: float) -> tuple[list[bytes], list[bytes]]:
    """(train, test) documents: a seeded draw of documents holding about ``fraction`` of the bytes
    is the test split (at least one document each, when there are two)."""
    order = np.random.default_rng(SPLIT_SEED).permutation(len(documents))
    total, taken, test = sum(map(len, documents)), 0, set()
    for i in order[:-1]:
        if taken >= fraction * total and test:
            break
        test.add(int(i))
        taken += len(documents[i])
    return [d for i, d in enumerate(documents) if i not in test], [documents[i] for i in sorted(test)]


def arrays(documents: list[bytes], seq_len: int, fraction: float) -> Arrays:
    train, test = held_out(documents, fraction)
    tx, vx = windows(train, seq_len), windows(test, seq_len)
    return Arrays(tx, np.arange(len(tx)), vx, np.arange(len(vx)), SYMBOLS)


class TextSource(Source):
    """What the text sources share: the task, the symbols, the windows and their counts."""

    task = "language_modeling"

    def check(self, cfg) -> None:
        if cfg.seq_len < 1:
            raise bad_value("data.seq_len", cfg.seq_len, "must be positive")
        if not 0 < cfg.test_fraction < 1:
            raise bad_value("data.test_fraction", cfg.test_fraction, "must lie in (0, 1)")

    def splits(self, cfg) -> tuple[int, int]:
        loaded = self.load(cfg)
        return len(loaded.train_y), len(loaded.test_y)

    def classes(self, cfg) -> int:
        return len(SYMBOLS)

    def shape(self, cfg) -> tuple[int, ...]:
        return (cfg.seq_len,)


class DocumentSource(TextSource):
    """A text source of documents in memory, its test split held out by document (``held_out``)."""

    @abstractmethod
    def documents(self, cfg) -> list[bytes]:
        """Every document, in a fixed order."""

    def load(self, cfg) -> Arrays:
        return arrays(self.documents(cfg), cfg.seq_len, cfg.test_fraction)


@functools.lru_cache(maxsize=4)
def read_documents(files: tuple[str, ...], paragraphs: bool, stamp: tuple) -> tuple[bytes, ...]:
    """The documents of ``files``: each file, or a single file's paragraphs (``stamp``: the files'
    sizes and times, so an edited file is read again)."""
    if paragraphs:
        text = Path(files[0]).read_bytes().replace(b"\r\n", b"\n")
        return tuple(p.strip() for p in text.split(b"\n\n") if p.strip())
    return tuple(Path(p).read_bytes() for p in files)


def _files(cfg: TextSettings) -> list[Path]:
    """The files read: ``data.root`` itself, or its files (``data.include``'s, else every text file below it)."""
    path = Path(cfg.root).expanduser()
    if path.is_file():
        return [path]
    if cfg.include:
        return sorted(p for p in path.glob(cfg.include) if p.is_file())
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)


@SOURCES.registered(TextSettings)
class Text(DocumentSource):
    name = "text"

    def check(self, cfg: TextSettings) -> None:
        super().check(cfg)
        if not cfg.root:
            raise LotteryError("data=text needs data.root=PATH: a text file, or a folder of .txt/.md/.rst files")
        path = Path(cfg.root).expanduser()
        if not path.exists():
            raise LotteryError(f"data.root={cfg.root} does not exist")
        if path.is_dir() and not _files(cfg):
            raise LotteryError(f"data.root={cfg.root} holds no " + (f"files matching data.include={cfg.include}"
                                                                    if cfg.include else f"{'/'.join(SUFFIXES)} files"))
        documents = self.documents(cfg)
        if len(documents) < 2:
            raise LotteryError(f"data.root={cfg.root} holds {len(documents)} document(s): the test split is held out "
                               "by document, so it needs at least 2 (paragraphs of a file, or files of a folder)")
        train, test = self.splits(cfg)
        if not train or not test:
            raise LotteryError(f"data.root={cfg.root} ({sum(map(len, documents))} bytes) is too short for one "
                               f"sequence of data.seq_len={cfg.seq_len} in each split ({train} train, {test} test): "
                               "use more text or a smaller data.seq_len")

    def documents(self, cfg: TextSettings) -> list[bytes]:
        files = _files(cfg)
        stamp = tuple((p.stat().st_size, p.stat().st_mtime_ns) for p in files)
        return list(read_documents(tuple(map(str, files)), Path(cfg.root).expanduser().is_file(), stamp))

    def fingerprint(self, cfg: TextSettings) -> str:
        digest = hashlib.sha256()
        for d in self.documents(cfg):
            digest.update(hashlib.sha256(d).digest())
        return f"text-bytes-v1-{digest.hexdigest()[:16]}-T{cfg.seq_len}-test{cfg.test_fraction}"


@functools.lru_cache(maxsize=2)
def generated_documents(count: int) -> list[bytes]:
    """A small language with learnable structure: 64 made-up words, each followed by one of 3
    likely successors (a first-order Markov chain), in sentences of 4 to 12 words; seeded."""
    rng = np.random.default_rng(4321)
    letters = np.array(list("etaoinshrdlucmfwyp"))
    words = ["".join(rng.choice(letters, size=rng.integers(2, 7))) for _ in range(64)]
    successors = rng.integers(0, len(words), size=(len(words), 3))
    out = []
    for _ in range(count):
        sentences = []
        for _ in range(rng.integers(3, 7)):
            w = int(rng.integers(len(words)))
            sentence = [words[w]]
            for _ in range(rng.integers(4, 13) - 1):
                w = int(successors[w, rng.choice(3, p=[0.6, 0.3, 0.1])])
                sentence.append(words[w])
            sentences.append(" ".join(sentence).capitalize() + ".")
        out.append(" ".join(sentences).encode())
    return out


@SOURCES.registered(SyntheticTextSettings)
class SyntheticText(DocumentSource):
    name = "synthetic_text"

    def check(self, cfg: SyntheticTextSettings) -> None:
        super().check(cfg)
        if cfg.documents < 2:
            raise bad_value("data.documents", cfg.documents, "at least 2: the test split is held out by document")

    def documents(self, cfg: SyntheticTextSettings) -> list[bytes]:
        return generated_documents(cfg.documents)

    def fingerprint(self, cfg: SyntheticTextSettings) -> str:
        return f"synthetic-text-v1-{cfg.documents}-T{cfg.seq_len}-test{cfg.test_fraction}"


@dataclass
class HFTextSettings(DataConfig):
    dataset: str = opt("Salesforce/wikitext", "a data set of the Hugging Face hub, or a datasets builder (text, json, "
                                              "csv, parquet) reading data.data_files")
    subset: Optional[str] = opt("wikitext-103-raw-v1", "the data set's configuration (e.g. wikitext-2-raw-v1)")
    data_files: Optional[List[str]] = opt(None, "local files for a builder: nothing is downloaded")
    text_field: str = opt("text", "the column holding the text")
    revision: Optional[str] = opt(None, "the hub revision (None: the newest; its commit enters the identity)")
    seq_len: int = opt(128, "tokens (bytes) per sequence")
    test_fraction: float = opt(0.1, "share of the documents held out as the test split, when the data set has no "
                                    "test split of its own")


@functools.lru_cache(maxsize=4)
def hub_commit(dataset: str, revision: str | None) -> str:
    """The hub commit of a data set (what names its content), or one line saying why there is none."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        return HfApi().dataset_info(dataset, revision=revision, timeout=15).sha
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise LotteryError(f"data.dataset={dataset}" + (f" at revision {revision}" if revision else "") +
                           " is not a data set of the Hugging Face hub: check its name "
                           "(https://huggingface.co/datasets)") from None
    except Exception as e:  # noqa: BLE001 - no network, a proxy, the hub down: all mean the same here
        raise LotteryError(f"data=hf_text cannot reach the Hugging Face hub ({one_line(e)[:120]}): on a machine "
                           "without it, give local files (data.dataset=text data.data_files=[...]) or use "
                           "data=text data.root=PATH") from None


@functools.lru_cache(maxsize=2)
def hf_documents(dataset: str, subset: str | None, files: tuple[str, ...], field: str, revision: str | None,
                 cache: str) -> tuple[tuple[bytes, ...], tuple[bytes, ...] | None]:
    """(train, test) documents of a ``datasets`` data set: its rows' text (empty rows dropped);
    test None when it has no test split."""
    import datasets

    datasets.disable_progress_bars()
    try:
        loaded = datasets.load_dataset(dataset, subset, data_files=list(files) or None, revision=revision,
                                       cache_dir=cache)
    except Exception as e:  # noqa: BLE001 - a missing file, a wrong builder or configuration
        raise LotteryError(f"datasets.load_dataset({dataset!r}, {subset!r}) failed ({one_line(e)[:160]}): check "
                           "data.dataset, data.subset and data.data_files") from None
    if "train" not in loaded or field not in loaded["train"].column_names:
        raise LotteryError(f"data set {dataset} has no train split with a {field!r} column (splits: "
                           f"{', '.join(loaded)}; columns: {', '.join(next(iter(loaded.values())).column_names)}): "
                           "set data.text_field")

    def rows(split) -> tuple[bytes, ...]:
        return tuple(t.encode() for t in split[field] if t and t.strip())

    return rows(loaded["train"]), rows(loaded["test"]) if "test" in loaded else None


@SOURCES.registered(HFTextSettings)
class HFText(TextSource):
    name = "hf_text"

    def _documents(self, cfg: HFTextSettings):
        if not cfg.data_files:
            hub_commit(cfg.dataset, cfg.revision)  # one line before anything is downloaded
        cache = str(Path(cfg.cache).expanduser() / "hf-datasets")
        return hf_documents(cfg.dataset, cfg.subset, tuple(cfg.data_files or ()), cfg.text_field, cfg.revision, cache)

    def check(self, cfg: HFTextSettings) -> None:
        super().check(cfg)
        train, test = self.splits(cfg)
        if not train or not test:
            raise LotteryError(f"data set {cfg.dataset} is too short for one sequence of data.seq_len={cfg.seq_len} "
                               f"in each split ({train} train, {test} test)")

    def load(self, cfg: HFTextSettings) -> Arrays:
        train, test = self._documents(cfg)
        if test is None:
            return arrays(list(train), cfg.seq_len, cfg.test_fraction)
        tx, vx = windows(list(train), cfg.seq_len), windows(list(test), cfg.seq_len)
        return Arrays(tx, np.arange(len(tx)), vx, np.arange(len(vx)), SYMBOLS)

    def fingerprint(self, cfg: HFTextSettings) -> str:
        if cfg.data_files:
            digest = hashlib.sha256()
            for f in sorted({p for f in cfg.data_files for p in glob.glob(str(Path(f).expanduser()))}):  # globs too
                digest.update(hashlib.sha256(Path(f).read_bytes()).digest())
            content = f"files-{digest.hexdigest()[:16]}"
        else:
            content = f"hub-{hub_commit(cfg.dataset, cfg.revision)}"
        return (f"hf-text-v1-{cfg.dataset}-{cfg.subset}-{cfg.text_field}-{content}-T{cfg.seq_len}"
                f"-test{cfg.test_fraction}")
