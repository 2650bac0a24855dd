"""Text analysis for lexical retrieval: lowercase, split, drop stopwords, stem.

The default chain is the one ``bm25s`` uses with PyStemmer, so that xpkit's BM25 and the
reference agree term for term: lowercase; tokens are runs of two or more word characters
(scikit-learn's ``(?u)\\b\\w\\w+\\b``); an English stopword list (``en``: Lucene's 33
words, bm25s's default; ``en_plus``: NLTK's 179) is applied to the lowercased word *before*
stemming; the Snowball English stemmer (Porter2, via PyStemmer)
stems what is left. Stems are memoised per analyzer, so a large corpus stems each distinct
word once.

The analyzer is described by ``params()``, which an index records beside its postings: a
query must be analyzed exactly as the documents were, and an index whose analyzer differs
from the one asked for is rebuilt rather than silently mixed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from xpkit.core.errors import UsageError

TOKEN_PATTERN = r"(?u)\b\w\w+\b"

# Lucene's English stopwords (bm25s "en") and NLTK's list (bm25s "en_plus"), kept here so
# the analysis does not depend on another package's internals.
_LUCENE_EN = """a an and are as at be but by for if in into is it
no not of on or such that the their then there these they this to was will with"""
_NLTK_EN = """
a about above after again against ain all am an and any are aren aren't as at be because
been before being below between both but by can couldn couldn't d did didn didn't do does
doesn doesn't doing don don't down during each few for from further had hadn hadn't has
hasn hasn't have haven haven't having he her here hers herself him himself his how i if in
into is isn isn't it it's its itself just ll m ma me mightn mightn't more most mustn
mustn't my myself needn needn't no nor not now o of off on once only or other our ours
ourselves out over own re s same shan shan't she she's should should've shouldn shouldn't
so some such t than that that'll the their theirs them themselves then there these they
this those through to too under until up ve very was wasn wasn't we were weren weren't what
when where which while who whom why will with won won't wouldn wouldn't y you you'd you'll
you're you've your yours yourself yourselves
"""
STOPWORDS_EN: frozenset[str] = frozenset(_LUCENE_EN.split())
STOPWORDS_EN_PLUS: frozenset[str] = frozenset(_NLTK_EN.split())

STOPWORD_LISTS: dict[str, frozenset[str]] = {"en": STOPWORDS_EN, "en_plus": STOPWORDS_EN_PLUS,
                                              "none": frozenset()}
STEMMERS = ("english", "porter", "none")


@dataclass
class Analyzer:
    """Lowercase → regex tokens → stopwords → stemmer. ``stemmer="none"`` turns stemming off."""

    lower: bool = True
    stopwords: str = "en"  # "en", "en_plus" or "none"
    stemmer: str = "english"
    token_pattern: str = TOKEN_PATTERN
    _stem_cache: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.stopwords not in STOPWORD_LISTS:
            raise UsageError(f"--stopwords {self.stopwords}: expected one of "
                             f"{', '.join(STOPWORD_LISTS)}.")
        if self.stemmer not in STEMMERS:
            raise UsageError(f"--stemmer {self.stemmer}: expected one of {', '.join(STEMMERS)}.")
        self._split = re.compile(self.token_pattern).findall
        self._stop = STOPWORD_LISTS[self.stopwords]
        self._stem_word: Any = None
        if self.stemmer != "none":
            try:
                import Stemmer  # PyStemmer
            except ImportError as exc:  # pragma: no cover - a declared dependency
                raise UsageError("stemming needs PyStemmer (pip install PyStemmer), or pass "
                                 "--stemmer none.") from exc
            self._stem_word = Stemmer.Stemmer(self.stemmer).stemWord

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Analyzer:
        return cls(lower=params.get("lower", True), stopwords=params.get("stopwords", "en"),
                   stemmer=params.get("stemmer", "english"),
                   token_pattern=params.get("token_pattern", TOKEN_PATTERN))

    def params(self) -> dict[str, Any]:
        return {"lower": self.lower, "stopwords": self.stopwords, "stemmer": self.stemmer,
                "token_pattern": self.token_pattern}

    def __call__(self, text: str | None) -> list[str]:
        """The terms of one text, in order, with repeats (a query's repeats weigh as in bm25s)."""
        if not text:
            return []
        if self.lower:
            text = text.lower()
        stop = self._stop
        words = [w for w in self._split(text) if w not in stop]
        if self._stem_word is None:
            return words
        cache = self._stem_cache
        out = []
        for w in words:
            s = cache.get(w)
            if s is None:
                s = cache[w] = self._stem_word(w)
            out.append(s)
        return out

    def many(self, texts: Iterable[str | None]) -> list[list[str]]:
        return [self(t) for t in texts]


def term_counts(terms: Sequence[str]) -> dict[str, int]:
    """Term frequencies of one analyzed text."""
    counts: dict[str, int] = {}
    for t in terms:
        counts[t] = counts.get(t, 0) + 1
    return counts
