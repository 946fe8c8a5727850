"""WordNet 3.0 (Debian ``wordnet-base``): the ``data.{noun,verb,adj,adv}`` files, one synset a
line: its words, its lexicographer file and its gloss (a definition, then example sentences in
double quotes).

Line format (wndb(5)): ``offset lex_filenum ss_type w_cnt word lex_id [word lex_id ...] p_cnt
[pointers ...] [frames ...] | gloss``; ``w_cnt`` is two hexadecimal digits. Lines starting with
two spaces are the licence header.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ...errors import InputError

DEBIAN_ROOT = Path("/usr/share/wordnet")
PACKAGE = "wordnet-base"
PARTS_OF_SPEECH = ("noun", "verb", "adj", "adv")

_MARKER = re.compile(r"\((?:a|p|ip)\)$")  # adjective position markers: "galore(ip)"
_EXAMPLE = re.compile(r'"([^"]+)"')


@dataclass(frozen=True)
class Synset:
    key: str  # "{pos}:{offset}", unique
    pos: str  # noun, verb, adj, adv
    lex_file: int  # lexicographer file number (noun.animal, verb.motion ...): a coarse topic
    lemmas: tuple[str, ...]  # "domestic dog" (underscores made spaces)
    definition: str
    examples: tuple[str, ...]

    @property
    def lemma(self) -> str:
        return self.lemmas[0]

    @property
    def defined(self) -> str:
        """The lemma and its definition, e.g. "dog: a member of the genus Canis ..."."""
        return f"{self.lemma}: {self.definition}"


def parse_gloss(gloss: str) -> tuple[str, tuple[str, ...]]:
    """(definition, example sentences) of a gloss such as 'give a structure to; "I need to
    structure my days"'."""
    quote = gloss.find('"')
    definition = (gloss if quote < 0 else gloss[:quote]).strip().rstrip(";").strip()
    examples = tuple(e.strip() for e in _EXAMPLE.findall(gloss[quote:] if quote >= 0 else "") if e.strip())
    return definition, examples


def parse_line(text: str, pos: str, *, file: str, line: int) -> Synset | None:
    """The synset of a data-file line; None for the licence header and blank lines."""
    if not text.strip() or text.startswith("  "):
        return None
    head, bar, gloss = text.partition(" | ")
    fields = head.split()
    try:
        if not bar:
            raise ValueError("no ' | ' before the gloss")
        offset, lex_file, count = fields[0], int(fields[1]), int(fields[3], 16)
        words = fields[4:4 + 2 * count:2]
        if len(words) != count or count == 0:
            raise ValueError(f"expected {count} words")
    except (ValueError, IndexError) as exc:
        raise InputError(f"not a WordNet data line ({exc})", file=file, line=line) from None
    lemmas = tuple(_MARKER.sub("", word).replace("_", " ") for word in words)
    definition, examples = parse_gloss(gloss.strip())
    return Synset(f"{pos}:{offset}", pos, lex_file, lemmas, definition, examples)


def read_synsets(root: str | Path, parts_of_speech=PARTS_OF_SPEECH) -> list[Synset]:
    """Every synset of the data files under ``root``, in file order (noun, verb, adj, adv)."""
    synsets = []
    for pos in parts_of_speech:
        path = Path(root) / f"data.{pos}"
        if not path.is_file():
            raise InputError(f"WordNet data file not found (install {PACKAGE})", file=str(path))
        with open(path, encoding="utf-8", errors="replace") as handle:
            for number, text in enumerate(handle, start=1):
                synset = parse_line(text.rstrip("\n"), pos, file=str(path), line=number)
                if synset is not None and synset.definition:
                    synsets.append(synset)
    return synsets
