"""Labelled English text that works offline, for probing and concept evaluations.

- ``docstrings``: the first paragraph of the docstrings of Python's standard library (real
  documentation text that ships with every Python), labelled with the topic of the module it
  comes from: text, math, files, network, concurrency.
- ``sentiment``: the words of the VADER sentiment lexicon (human ratings from −4 to +4, shipped
  in the ``vaderSentiment`` wheel), positive (mean rating ≥ 1) or negative (≤ −1).
- ``grammar``: documents of saelab's shipped English corpus (``saelab.text.corpus_path``),
  labelled with the genre of the grammar that wrote them (town article, story, recipe, weather
  report, lesson, nature note, dialogue); the labels come from replaying the seeded generator.
- ``first_letter``: whole-word, purely alphabetic tokens of a tokenizer's vocabulary, labelled
  with their first letter (the feature-absorption task).

Each task is a list of texts and a label per text (the index into ``classes``).
"""

from __future__ import annotations

import importlib
import inspect
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DOCSTRING_TOPICS: dict[str, tuple[str, ...]] = {
    "text": ("re", "string", "textwrap", "difflib", "unicodedata", "codecs", "html.parser",
             "locale", "gettext", "csv"),
    "math": ("math", "cmath", "statistics", "decimal", "fractions", "random", "numbers",
             "operator"),
    "files": ("os", "shutil", "pathlib", "glob", "tempfile", "io", "stat", "filecmp",
              "zipfile", "tarfile"),
    "network": ("socket", "ssl", "http.client", "http.server", "urllib.request",
                "urllib.parse", "smtplib", "ftplib", "imaplib", "poplib"),
    "concurrency": ("threading", "multiprocessing.pool", "asyncio.tasks", "asyncio.events",
                    "queue", "concurrent.futures", "subprocess", "sched", "selectors"),
}
_SENTENCE = re.compile(r"^[A-Z][a-z]+(\s+\S+){4,}")


class TaskError(ValueError):
    """A labelled text task is unknown or its data is missing; the message says the fix."""


@dataclass
class TextTask:
    """Texts with one class label each."""

    name: str
    texts: list[str]
    labels: list[int]
    classes: tuple[str, ...]
    source: str

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise TaskError(f"task {self.name}: {len(self.texts)} texts but "
                            f"{len(self.labels)} labels")

    def subsample(self, per_class: int, seed: int = 0) -> TextTask:
        """At most ``per_class`` texts of every class (seeded choice, original order kept)."""
        rng = random.Random(seed)
        keep: list[int] = []
        for c in range(len(self.classes)):
            rows = [i for i, y in enumerate(self.labels) if y == c]
            keep += rows if len(rows) <= per_class else rng.sample(rows, per_class)
        keep.sort()
        return TextTask(self.name, [self.texts[i] for i in keep], [self.labels[i] for i in keep],
                        self.classes, self.source)


def _own_docstrings(module: Any) -> list[str]:
    """Docstrings written in ``module`` itself: the module, its public functions and classes
    and their public members (inherited docstrings are left out)."""
    objects: list[Any] = [module]
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        objects.append(obj)
        if inspect.isclass(obj):
            objects += [o for n, o in vars(obj).items() if not n.startswith("_")]
    out = []
    for obj in objects:
        doc = obj.__doc__ if isinstance(getattr(obj, "__doc__", None), str) else None
        if doc:
            out.append(inspect.cleandoc(doc))
    return out


def docstring_task(min_chars: int = 30, max_chars: int = 400) -> TextTask:
    """First paragraphs (``min_chars``..``max_chars`` long, starting like an English sentence)
    of the standard library's own docstrings; a paragraph found under two topics is dropped."""
    found: dict[str, set[int]] = {}
    for label, modules in enumerate(DOCSTRING_TOPICS.values()):
        for module_name in modules:
            try:
                module = importlib.import_module(module_name)
            except ImportError:  # a module missing from this Python build
                continue
            for doc in _own_docstrings(module):
                paragraph = " ".join(doc.split("\n\n")[0].split())
                if min_chars <= len(paragraph) <= max_chars and _SENTENCE.match(paragraph):
                    found.setdefault(paragraph, set()).add(label)
    items = sorted((text, next(iter(labels))) for text, labels in found.items()
                   if len(labels) == 1)
    return TextTask("docstrings", [t for t, _ in items], [y for _, y in items],
                    tuple(DOCSTRING_TOPICS), "Python standard library docstrings")


def sentiment_task(min_abs_rating: float = 1.0) -> TextTask:
    """Alphabetic words of the VADER lexicon with |mean rating| ≥ ``min_abs_rating``: class 0
    negative, 1 positive."""
    try:
        import vaderSentiment
    except ImportError as err:
        raise TaskError("the sentiment task reads the VADER lexicon: pip install "
                        "vaderSentiment (included in saelab[concepts])") from err
    path = Path(vaderSentiment.__file__).parent / "vader_lexicon.txt"
    texts, labels = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) < 2 or not parts[0].isalpha():
            continue
        rating = float(parts[1])
        if abs(rating) >= min_abs_rating:
            texts.append(parts[0])
            labels.append(int(rating > 0))
    return TextTask("sentiment", texts, labels, ("negative", "positive"),
                    "VADER sentiment lexicon (vaderSentiment 3.3)")


def first_letter_task(tokenizer: Any, min_chars: int = 2) -> TextTask:
    """Whole-word, purely alphabetic, lower-case vocabulary tokens (no ``##`` pieces, at least
    ``min_chars`` letters), labelled with their first letter a..z."""
    vocab = tokenizer.get_vocab()
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = sorted(w for w in vocab if len(w) >= min_chars and w.isascii() and w.isalpha()
                   and w.islower())
    if not words:
        raise TaskError("the tokenizer's vocabulary has no whole alphabetic words; the "
                        "first-letter task needs a word-piece or word-level vocabulary")
    return TextTask("first_letter", words, [letters.index(w[0]) for w in words],
                    tuple(letters), "tokenizer vocabulary")


def grammar_task() -> TextTask:
    """The shipped corpus's documents, labelled with their genre. The corpus is written by a
    seeded grammar (``corpus/generate.py``); replaying it with the same seed gives each
    document's genre, and every replayed document must equal the shipped one."""
    import importlib.util

    from saelab.text.readers import corpus_path

    path = corpus_path()
    spec = importlib.util.spec_from_file_location("_saelab_corpus_generate",
                                                  path.with_name("generate.py"))
    if spec is None or spec.loader is None:
        raise TaskError(f"cannot load the corpus generator beside {path}")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    docs = [d for d in path.read_text(encoding="utf-8").split("\n\n") if d.strip()]
    rng = random.Random(0)
    genres = list(generator.GENRES)
    labels: list[int] = []
    for doc in docs:
        genre = rng.choice(genres)
        if genre(rng) != doc.strip("\n"):
            raise TaskError(f"{path} does not match its generator (document {len(labels)}); "
                            "regenerate it with python src/saelab/text/corpus/generate.py")
        labels.append(genres.index(genre))
    return TextTask("grammar", [d.strip() for d in docs], labels,
                    tuple(g.__name__ for g in genres), "saelab's generated English corpus")


TEXT_TASKS: dict[str, Callable[[], TextTask]] = {"docstrings": docstring_task,
                                                  "sentiment": sentiment_task,
                                                  "grammar": grammar_task}


def text_task(name: str) -> TextTask:
    """A labelled text task by name (``docstrings``, ``sentiment`` or ``grammar``)."""
    if name not in TEXT_TASKS:
        raise TaskError(f"unknown text task {name!r}; choose from {sorted(TEXT_TASKS)}")
    return TEXT_TASKS[name]()
