from __future__ import annotations

import ast
import textwrap

from automerge.zoo import corpus as C


def test_split_rule_is_stable_and_about_one_in_ten():
    names = [f"Lib/mod{i}.py" for i in range(2000)]
    frac = sum(C.is_heldout(n) for n in names) / len(names)
    assert 0.07 < frac < 0.13
    # the rule is a pure function of the name (no process-dependent hashing)
    assert C.stable_hash("Lib/json/decoder.py") == int.from_bytes(
        __import__("hashlib").sha256(b"Lib/json/decoder.py").digest()[:8], "big")


def test_stdlib_files_are_classified():
    code, tests = C.stdlib_files()
    code_names = {s for s, _ in code}
    test_names = {s for s, _ in tests}
    assert "Lib/json/decoder.py" in code_names
    assert all(s.rsplit("/", 1)[-1].startswith("test_") for s in test_names)
    assert not any("site-packages" in s or "/encodings/" in s for s in code_names)
    assert not code_names & test_names


def test_clean_rst_drops_markup_and_code():
    rst = """\
:mod:`json` --- JSON encoder
============================

.. module:: json
   :synopsis: Encode.

Use :func:`~json.dumps` to encode ``obj``, see `JSON <https://json.org>`_ and **this**.

Example::

    >>> json.dumps(1)
    '1'

.. function:: dumps(obj, *, indent=None)

   Serialize *obj*.

   .. versionadded:: 3.2

.. index:: single: foo

.. code-block:: python

   x = 1

Last paragraph.
"""
    text = C.clean_rst(rst)
    assert "json --- JSON encoder" in text
    assert "Use dumps to encode obj, see JSON and this." in text
    assert "Example:" in text and ">>>" not in text and "x = 1" not in text
    assert "dumps(obj, *, indent=None)" in text and "Serialize obj." in text
    assert "New in version 3.2." in text
    assert "===" not in text and ".. " not in text and "synopsis" not in text
    assert text.rstrip().endswith("Last paragraph.")


SRC = '''\
import os


class A:
    """A class docstring that is long enough."""

    @property
    def f(self, x):
        """Return x plus one.

        More details here.
        """
        y = x + 1
        return y
'''


def test_function_pairs_format():
    pairs = C.function_pairs(SRC)
    assert len(pairs) == 1
    p = pairs[0]
    assert p.gen_prompt.startswith("def f(self, x):\n") and p.gen_prompt.endswith('"""')
    assert p.gen_target == "\n    y = x + 1\n    return y\n"
    assert p.sum_prompt == "def f(self, x):\n    y = x + 1\n    return y\n# Summary:"
    assert p.sum_target == " Return x plus one.\n"
    ast.parse(p.gen_prompt + p.gen_target)  # the pair is valid code again
    assert C.docstrings(SRC) == ["A class docstring that is long enough.", "Return x plus one.\n\nMore details here."]


def test_external_records_name_their_package():
    code, prose, prov = C.external_records(packages=("typer",), max_code_bytes=5000)
    assert code and prov[0]["package"].lower() == "typer"
    for r in code + prose:
        d = r.to_json()
        assert d["source"].startswith("site-packages/") and "package" in d and "licence" in d


def test_test_corpus_needs_no_docs_package(monkeypatch, tmp_path):
    c = C.collect("test", doc_root=tmp_path)  # nothing there
    assert c.heldout["code"] and c.heldout["prose"] and c.heldout["tests"] and c.train["prose"]
    train_sources = set()
    for r in c.heldout["code"] + c.heldout["tests"] + c.heldout["prose"]:
        assert C.is_heldout(r.source)
        train_sources.add(r.source)
    held_texts = {r.text for r in c.heldout["code"]}
    assert not held_texts & set(c.train["code"])


def test_full_corpus_without_docs_raises(tmp_path):
    import pytest

    with pytest.raises(C.MissingDocsError):
        C.collect("full", doc_root=tmp_path)


def test_bare_code_drops_comments_and_docstrings_only():
    src = textwrap.dedent('''\
        """Module docstring."""
        # a comment line
        import os  # trailing comment


        class A:
            """Class doc,
            two lines."""

            def f(self, x):
                """Only a docstring."""

            def g(self):
                s = "# not a comment"
                """not a docstring: a later string statement"""
                return s
        ''')
    bare = C.bare_code(src)
    ast.parse(bare)  # still Python: the emptied body got `pass`
    for gone in ("Module docstring", "a comment line", "trailing comment", "Class doc", "two lines",
                 "Only a docstring"):
        assert gone not in bare
    for kept in ("import os\n", "class A:", "def f(self, x):\n        pass", 's = "# not a comment"',
                 "not a docstring: a later string statement", "return s"):
        assert kept in bare
    assert C.bare_code("def broken(:\n") == ""
