"""load_texts over every kind of source, the bundled corpus, and the errors."""

import sys

import pytest

from mlxterp import data
from mlxterp.data import default_corpus, load_texts
from mlxterp.errors import DataError


class FakeDataset:
    """Quacks like a Hugging Face `datasets.Dataset`: column_names and iteration over row dicts."""

    def __init__(self, rows):
        self.rows = rows
        self.column_names = list(rows[0])

    def __iter__(self):
        return iter(self.rows)


def test_default_corpus_is_bundled_shakespeare():
    corpus = default_corpus()
    assert len(corpus) == 492
    assert corpus[0].startswith("First Citizen:\nBefore we proceed any further")
    assert sum(map(len, corpus)) > 1_000_000
    assert load_texts(None, max_texts=3) == corpus[:3]


def test_default_corpus_returns_a_fresh_list():
    default_corpus().clear()
    assert len(default_corpus()) == 492


def test_list_of_strings_filters_short_and_heading_texts():
    texts = ["a first text", "", "   ", " = Heading = ", " = = Sub heading = = ", "ok"]
    assert load_texts(texts) == ["a first text", "ok"]
    assert load_texts(texts, min_chars=3) == ["a first text"]
    with_headings = [" = Heading = ", " = = Sub heading = = ", "ok"]
    assert load_texts(texts, skip_headings=False)[1:] == with_headings
    assert load_texts(texts, max_texts=1) == ["a first text"]


def test_txt_file_with_blank_lines_is_split_into_paragraphs(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_text("First paragraph\nstill first.\n\n\nSecond one.\n  \nThird.\n")
    assert load_texts(path) == ["First paragraph\nstill first.", "Second one.", "Third."]
    assert load_texts(str(path)) == load_texts(path)


def test_txt_file_without_blank_lines_has_one_document_per_line(tmp_path):
    path = tmp_path / "wiki.txt"
    path.write_bytes(b" = Title = \r\n Line one .\r\n Line two .\r\n")
    assert load_texts(path) == [" Line one .", " Line two ."]


def test_folder_of_txt_files_is_read_in_sorted_order(tmp_path):
    (tmp_path / "b.txt").write_text("from b")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("from c")
    (tmp_path / "a.txt").write_text("from a\n\nagain a")
    (tmp_path / "skip.md").write_text("not text")
    assert load_texts(tmp_path) == ["from a", "again a", "from b", "from c"]


def test_hf_style_dataset_uses_text_field():
    rows = [{"text": "one", "label": 0}, {"text": "", "label": 1}, {"text": "two", "label": 1}]
    dataset = FakeDataset(rows)
    assert load_texts(dataset) == ["one", "two"]
    with pytest.raises(DataError, match="no 'body' column.*text_field"):
        load_texts(dataset, text_field="body")


def test_dataset_name_without_datasets_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match="pip install"):
        load_texts("wikitext:wikitext-103-raw-v1:train")
    with pytest.raises(DataError, match="pip install"):
        load_texts(("wikitext", "wikitext-103-raw-v1"))


def test_dataset_name_is_parsed_into_name_config_split(monkeypatch):
    calls = []

    def fake_hub_texts(name, config=None, split=None, *, text_field):
        calls.append((name, config, split, text_field))
        return iter(["loaded"])

    monkeypatch.setattr(data, "_hub_texts", fake_hub_texts)
    assert load_texts("wikitext:wikitext-103-raw-v1:test", text_field="t") == ["loaded"]
    assert load_texts(("wikitext", "wikitext-2-raw-v1")) == ["loaded"]
    assert calls == [
        ("wikitext", "wikitext-103-raw-v1", "test", "t"),
        ("wikitext", "wikitext-2-raw-v1", None, "text"),
    ]


def test_tuple_of_sentences_is_texts_not_a_dataset_name():
    assert load_texts(("a sentence here", "another one")) == ["a sentence here", "another one"]


@pytest.mark.parametrize(
    "source, message",
    [
        ([], "gave no text"),
        (["", "  "], "gave no text"),
        ("some words, not a path", "neither an existing path nor a dataset name"),
        ("missing/file.txt", "does not exist"),
        ("a:b:c:d", "too many parts"),
        (42, "Cannot read texts from a int"),
        ([1, 2], "Expected text documents"),
    ],
)
def test_bad_sources_raise_data_error(source, message):
    with pytest.raises(DataError, match=message):
        load_texts(source)


def test_empty_folder_and_empty_file_raise(tmp_path):
    with pytest.raises(DataError, match="no .txt files"):
        load_texts(tmp_path)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DataError, match="gave no text"):
        load_texts(tmp_path / "empty.txt")


def test_shared_wikitext_file_loads(shared_data_dir):
    texts = load_texts(shared_data_dir / "wikitext-2-raw-test.txt")
    assert texts[0].startswith(" Robert Boulter is an English film")
    assert not any(t.startswith(" = ") and t.endswith(" = ") for t in texts)
    assert len(texts) > 1000


def test_real_hugging_face_datasets():
    datasets = pytest.importorskip("datasets")
    table = datasets.Dataset.from_dict({"text": ["first doc", "", " = Title = ", "second doc"], "id": [0, 1, 2, 3]})
    assert load_texts(table) == ["first doc", "second doc"]
    assert load_texts(table.to_iterable_dataset(), max_texts=1) == ["first doc"]
    with pytest.raises(DataError, match=r"DatasetDict with splits \['test', 'train'\].*dataset\['train'\]"):
        load_texts(datasets.DatasetDict(train=table, test=table))
    with pytest.raises(DataError, match="no 'body' column"):
        load_texts(table, text_field="body")


def test_hub_dataset_offline_is_a_clear_error(monkeypatch):
    datasets = pytest.importorskip("datasets")
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    # datasets reads these at import time, so the environment variables alone come too late.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match="Could not load the dataset 'wikitext'.*offline, pass a .txt file"):
        load_texts("wikitext:wikitext-103-raw-v1:train")
