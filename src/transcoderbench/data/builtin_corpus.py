"""Text that ships with every CPython, so evaluation runs with no download and no data files.

Two corpora, both deterministic for a given Python version:

- ``pydoc_data.topics`` (the default; alias ``pydoc-topics``): ``pydoc_data.topics.topics``,
  the ``help()`` pages of the language reference (keywords, operators, statements), one
  document per topic in sorted key order. About 465k characters, ~113k SmolLM2 tokens.
- ``stdlib-docstrings``: module, class, function and method docstrings of a fixed, sorted list
  of standard-library modules, one document per docstring, in a fixed order.

``all`` is the first followed by the second. The text differs between Python versions (the
docs change), so a run records the Python version it used (see :func:`describe_builtin`).
"""

from __future__ import annotations

import importlib
import inspect
import platform
from collections.abc import Iterator

from transcoderbench.errors import UserError

DEFAULT_BUILTIN = "pydoc_data.topics"

#: Accepted names after ``builtin:`` and the canonical corpus each means.
BUILTIN_ALIASES: dict[str, str] = {
    "": DEFAULT_BUILTIN,
    "pydoc_data.topics": "pydoc_data.topics",
    "pydoc-topics": "pydoc_data.topics",
    "stdlib-docstrings": "stdlib-docstrings",
    "all": "all",
}

#: Modules whose docstrings form ``stdlib-docstrings``. Fixed and sorted so the corpus never
#: depends on what happens to be importable or already imported. Pure-Python modules only,
#: chosen for having long English docstrings and no import side effects.
STDLIB_DOCSTRING_MODULES: tuple[str, ...] = (
    "argparse",
    "ast",
    "calendar",
    "collections",
    "configparser",
    "contextlib",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "email.message",
    "enum",
    "fractions",
    "functools",
    "gettext",
    "heapq",
    "http.client",
    "inspect",
    "ipaddress",
    "json",
    "logging",
    "mailbox",
    "pathlib",
    "pickle",
    "pprint",
    "random",
    "shutil",
    "statistics",
    "string",
    "subprocess",
    "tarfile",
    "textwrap",
    "threading",
    "typing",
    "unittest.case",
    "urllib.parse",
    "zipfile",
)

#: Docstrings shorter than this (e.g. "Return self.") add little text and many separators.
MIN_DOCSTRING_CHARS = 40


def canonical_builtin_name(name: str) -> str:
    """Map the part after ``builtin:`` to a corpus name; unknown names are a user error."""
    try:
        return BUILTIN_ALIASES[name.strip()]
    except KeyError:
        choices = ", ".join(f"builtin:{k}" for k in BUILTIN_ALIASES if k)
        raise UserError(
            f"`data.dataset` builtin:{name}: unknown built-in corpus; choose one of {choices} "
            f"(or omit `data.dataset` for builtin:{DEFAULT_BUILTIN})"
        ) from None


def pydoc_topic_texts() -> Iterator[str]:
    """The ``help()`` topic pages, in sorted key order."""
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    for key in sorted(topics):
        text = topics[key]
        if text.strip():
            yield text


def _clean(doc: object) -> str | None:
    """A docstring, dedented, or None when missing or too short to be worth a document."""
    if not isinstance(doc, str):
        return None
    doc = inspect.cleandoc(doc)
    return doc if len(doc) >= MIN_DOCSTRING_CHARS else None


def _module_docstrings(module_name: str) -> Iterator[str]:
    """Module docstring, then each class (and its methods) and function defined there, by name.

    Only an object's *own* ``__doc__`` counts (``obj.__dict__``), so a subclass without a
    docstring does not repeat its base's.
    """
    module = importlib.import_module(module_name)
    doc = _clean(module.__doc__)
    if doc:
        yield doc
    namespace = vars(module)
    for name in sorted(namespace):
        obj = namespace[name]
        if getattr(obj, "__module__", None) != module.__name__:
            continue  # re-exported from elsewhere: counted where it is defined, if at all
        if inspect.isclass(obj):
            doc = _clean(obj.__dict__.get("__doc__"))
            if doc:
                yield doc
            for attr in sorted(vars(obj)):
                member = vars(obj)[attr]
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                if inspect.isfunction(member):
                    doc = _clean(member.__doc__)
                    if doc:
                        yield doc
        elif inspect.isfunction(obj):
            doc = _clean(obj.__doc__)
            if doc:
                yield doc


def stdlib_docstring_texts() -> Iterator[str]:
    """Docstrings of :data:`STDLIB_DOCSTRING_MODULES`, each exact text once, in a fixed order."""
    seen: set[str] = set()
    for module_name in STDLIB_DOCSTRING_MODULES:
        for doc in _module_docstrings(module_name):
            if doc not in seen:
                seen.add(doc)
                yield doc


def builtin_texts(name: str = DEFAULT_BUILTIN) -> Iterator[str]:
    """Documents of the built-in corpus ``name`` (a canonical name or an alias)."""
    canonical = canonical_builtin_name(name)
    if canonical in ("pydoc_data.topics", "all"):
        yield from pydoc_topic_texts()
    if canonical in ("stdlib-docstrings", "all"):
        yield from stdlib_docstring_texts()


def describe_builtin(name: str = DEFAULT_BUILTIN) -> dict:
    """What a report needs to say about the corpus: its name, parts and the Python version."""
    canonical = canonical_builtin_name(name)
    parts = {"pydoc_data.topics": ["pydoc_data.topics"], "stdlib-docstrings": ["stdlib docstrings"]}
    return {
        "corpus": canonical,
        "parts": parts.get(canonical, ["pydoc_data.topics", "stdlib docstrings"]),
        "python_version": platform.python_version(),
        "stdlib_modules": list(STDLIB_DOCSTRING_MODULES) if canonical != DEFAULT_BUILTIN else [],
    }
