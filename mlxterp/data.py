"""Text sources: strings, .txt files and folders, Hugging Face datasets, and the bundled corpus.

Every source becomes a `list[str]` of documents through `load_texts`.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import itertools
import json
import os
import random
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

from .errors import DataError

CORPUS_FILE = "corpus.jsonl.gz"
DEFAULT_SPLIT = "train"
_HEADING = re.compile(r"\s*(=+) .* \1\s*")
_BLANK_LINE = re.compile(r"\n[ \t]*\n")


def load_texts(
    dataset: Any = None,
    *,
    text_field: str = "text",
    max_texts: int | None = None,
    min_chars: int = 1,
    skip_headings: bool = True,
) -> list[str]:
    """Documents from `dataset`.

    Args:
        dataset: one of
            - None: the bundled default corpus (`default_corpus()`);
            - a list (or tuple) of strings: used as they are;
            - a path to a `.txt` file, or a folder whose `*.txt` files (recursively, sorted) are
              read: documents are separated by blank lines, and a file without blank lines has
              one document per line (WikiText's layout);
            - a Hugging Face `datasets.Dataset` or `IterableDataset`: its `text_field` column;
            - a dataset name, "name", "name:config" or "name:config:split", or a tuple of 2-3
              strings without whitespace, `(name, config[, split])`, loaded with
              `datasets.load_dataset` (split "train" unless given).
        text_field: the column holding the text, for Hugging Face datasets.
        max_texts: keep at most this many documents (read lazily, so streaming datasets stop early).
        min_chars: drop documents shorter than this once stripped of surrounding whitespace.
        skip_headings: drop WikiText heading lines such as " = Valkyria Chronicles = ".

    Returns:
        The documents, in source order.

    Raises:
        DataError: the source is of an unknown kind, unreadable, or yields no document.
    """
    texts = _iter_texts(dataset, text_field)
    kept = (t for t in texts if _keep(t, min_chars, skip_headings))
    out = list(itertools.islice(kept, max_texts))
    if not out:
        raise DataError(
            f"{_describe(dataset)} gave no text of at least {min_chars} characters. Pass a source "
            "with non-empty documents, lower min_chars, or use None for the bundled corpus."
        )
    return out


def default_corpus() -> list[str]:
    """The bundled corpus: 492 documents of Tiny Shakespeare (public domain, ~327k tokens).

    See `mlxterp/data/CORPUS_LICENSE.md` for its source and format.
    """
    return list(_bundled_corpus())


def split_documents(texts: Sequence[str], validation_split: float, seed: int) -> tuple[list[str], list[str]]:
    """Hold out whole documents: (train, validation) texts, shuffled by `seed`.

    A single document is split at a paragraph boundary near the split point instead.
    """
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise DataError("the dataset is empty: pass at least one non-empty text")
    if validation_split <= 0:
        return list(texts), []
    if len(texts) == 1:
        text = texts[0]
        cut = int(len(text) * (1 - validation_split))
        newline = text.rfind("\n", 0, cut)
        cut = newline if newline > 0 else cut
        return [text[:cut]], [text[cut:]]
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(texts) * validation_split))
    val = [texts[i] for i in order[:n_val]]
    train = [texts[i] for i in order[n_val:]]
    return train, val


@functools.lru_cache(maxsize=1)
def _bundled_corpus() -> tuple[str, ...]:
    resource = importlib.resources.files("mlxterp").joinpath("data", CORPUS_FILE)
    with resource.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as lines:
        return tuple(json.loads(line)["text"] for line in lines)


def _keep(text: Any, min_chars: int, skip_headings: bool) -> bool:
    if text is Ellipsis:
        raise DataError(
            "The dataset contains `...` (Ellipsis). In examples such as "
            '["Sample text 1", "Sample text 2", ...] it stands for more of your own texts: '
            "replace it with strings."
        )
    if not isinstance(text, str):
        raise DataError(
            f"Expected text documents (str), got a {type(text).__name__}; check text_field "
            "or pass a list of strings."
        )
    stripped = text.strip()
    if len(stripped) < max(min_chars, 1):
        return False
    return not (skip_headings and _HEADING.fullmatch(text))


def _iter_texts(dataset: Any, text_field: str) -> Iterator[Any]:
    if dataset is None:
        return iter(_bundled_corpus())
    if isinstance(dataset, tuple) and _is_dataset_name_tuple(dataset):
        return _hub_texts(*dataset, text_field=text_field)
    if isinstance(dataset, (list, tuple)):
        return iter(dataset)
    if isinstance(dataset, os.PathLike):
        return _path_texts(Path(dataset))
    if isinstance(dataset, str):
        return _string_texts(dataset, text_field)
    if _is_hf_dataset(dataset):
        return _dataset_texts(dataset, text_field)
    raise DataError(
        f"Cannot read texts from a {type(dataset).__name__}. Pass None, a list of strings, a "
        ".txt file or folder, a Hugging Face Dataset, or a dataset name like "
        "'wikitext:wikitext-103-raw-v1:train'."
    )


def _is_dataset_name_tuple(value: tuple) -> bool:
    return 2 <= len(value) <= 3 and all(
        isinstance(v, str) and v and not re.search(r"\s", v) for v in value
    )


def _string_texts(spec: str, text_field: str) -> Iterator[str]:
    path = Path(spec).expanduser()
    if path.exists() or path.suffix == ".txt":
        return _path_texts(path)
    if re.search(r"\s", spec) or not spec:
        raise DataError(
            f"{spec[:60]!r} is neither an existing path nor a dataset name. To use strings as "
            "documents, pass a list: load_texts([text])."
        )
    parts = spec.split(":")
    if len(parts) > 3:
        raise DataError(f"Dataset name {spec!r} has too many parts; use 'name:config:split'.")
    return _hub_texts(*parts, text_field=text_field)


def _path_texts(path: Path) -> Iterator[str]:
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise DataError(f"Folder {path} holds no .txt files; put UTF-8 .txt files in it.")
        return itertools.chain.from_iterable(_file_texts(f) for f in files)
    if path.is_file():
        return _file_texts(path)
    raise DataError(f"Text file or folder {path} does not exist; check the path.")


def _file_texts(path: Path) -> Iterator[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e}); convert it to UTF-8.") from e
    blocks = _BLANK_LINE.split(text) if _BLANK_LINE.search(text) else text.split("\n")
    return (block.strip("\n") for block in blocks)


def _is_hf_dataset(value: Any) -> bool:
    return type(value).__module__.startswith("datasets.") or hasattr(value, "column_names")


def _dataset_texts(dataset: Any, text_field: str) -> Iterator[Any]:
    columns = getattr(dataset, "column_names", None)
    if isinstance(columns, dict):
        raise DataError(
            f"Got a DatasetDict with splits {sorted(columns)}; pick one, e.g. dataset['train']."
        )
    if columns is not None and text_field not in columns:
        raise DataError(
            f"The dataset has no {text_field!r} column (it has {list(columns)}); pass "
            "text_field=<the column holding the text>."
        )
    return (row[text_field] for row in dataset)


def _hub_texts(
    name: str, config: str | None = None, split: str | None = None, *, text_field: str
) -> Iterator[Any]:
    try:
        import datasets
    except ImportError as e:
        raise DataError(
            f"Loading the dataset {name!r} needs the `datasets` package: "
            "`pip install 'mlxterp[datasets]'` (or `pip install datasets`)."
        ) from e
    try:
        dataset = datasets.load_dataset(name, config or None, split=split or DEFAULT_SPLIT)
    except (OSError, ValueError) as e:
        raise DataError(
            f"Could not load the dataset {name!r} (config {config!r}, split "
            f"{split or DEFAULT_SPLIT!r}): {e}. Check the name and your connection; offline, "
            "pass a .txt file or folder, a list of strings or None for the bundled corpus."
        ) from e
    return _dataset_texts(dataset, text_field)


def _describe(dataset: Any) -> str:
    if dataset is None:
        return "The bundled corpus"
    if isinstance(dataset, (str, os.PathLike)):
        return f"The source {str(dataset)!r}"
    return f"The {type(dataset).__name__} passed"
