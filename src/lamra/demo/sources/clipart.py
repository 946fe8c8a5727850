"""OpenClipart (Debian ``openclipart-svg``): SVG cliparts in category folders, with a title and
keywords in each file's RDF metadata; captions made from them, and rendering with cairosvg.

Many files carry a collection's name as their title ("Lemon SVG theme", "gramastar" on 1,375
stars, "Clipart by Nicu Buculei - contour_chipmunk" copied onto a giraffe): a title shared by
more than ``max_title_share`` files says nothing about the picture, so those files are skipped,
and a "Clipart by AUTHOR - NAME" title is replaced by the file's own name. Files with the same
bytes (the package ships some twice, in two folders) are read once.
"""

from __future__ import annotations

import hashlib
import html
import io
import logging
import re
import xml.etree.ElementTree as ElementTree
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

DEBIAN_ROOT = Path("/usr/share/openclipart/svg")
PACKAGE = "openclipart-svg"
MAX_TITLE_SHARE = 3  # a title on more files than this is a collection's name, not a caption
MAX_KEYWORDS = 3  # keywords appended to a caption
MAX_SVG_BYTES = 256_000  # larger files (about 90, some taking seconds to draw) are skipped

_AUTHOR_PREFIX = re.compile(r"^clip ?art by .+? - ", re.IGNORECASE)
# Keywords that describe the file, not the picture (or are machine noise: "hash(0x8a393fc)").
_NOISE_KEYWORDS = {"hash", "icon", "icons", "theme", "clip art", "clipart", "openclipart", "image", "svg",
                   "unsorted", "special", "signs and symbols", "shape", "shapes", "mapsym", "networksym",
                   "united nations member", "public domain", "media", "other", "misc"}


@dataclass(frozen=True)
class Clipart:
    """One usable clipart: where it is, what it shows, and the text that describes it."""

    path: Path  # the SVG file
    relative: str  # its path under the clipart root, e.g. "animals/mammals/a_simple_pig_01.svg"
    sha256: str  # of the SVG bytes
    title: str  # the cleaned title, e.g. "A simple pig"
    keywords: tuple[str, ...]  # the cleaned keywords not already in the title, at most MAX_KEYWORDS
    category: str  # the first two folders, e.g. "animals/mammals" ("people" for people/x.svg; "" unsorted)

    @property
    def caption(self) -> str:
        """The text of the clipart: its title, then its keywords, e.g. "Cavallo (mammal, horse)"."""
        return f"{self.title} ({', '.join(self.keywords)})" if self.keywords else self.title

    @property
    def group(self) -> str:
        """Cliparts with the same group share a title: they go to the same split, and a query
        naming one has all of them as positives."""
        return self.title.casefold()


@dataclass
class ClipartScan:
    cliparts: list[Clipart]
    skipped: Counter  # reason -> files


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def read_metadata(data: bytes) -> tuple[str | None, list[str]]:
    """(dc:title, rdf:li keywords) of the cc:Work in an SVG's metadata; (None, []) without one.

    Raises ``xml.etree.ElementTree.ParseError`` on a file that is not XML. Only the <metadata>
    element is parsed when it can stand alone (it declares its namespaces): 4x faster.
    """
    start = data.find(b"<metadata")
    end = data.find(b"</metadata>", start)
    root = None
    if start >= 0 and end > start:
        try:
            root = ElementTree.fromstring(data[start:end + len(b"</metadata>")])
        except ElementTree.ParseError:
            root = None  # e.g. namespaces declared on <svg>: parse the whole file
    if root is None:
        root = ElementTree.fromstring(data)
    work = next((element for element in root.iter() if _local(element.tag) == "Work"), None)
    if work is None:
        return None, []
    title, keywords = None, []
    for child in work:  # direct children: the creator's and publisher's dc:title sit deeper
        name = _local(child.tag)
        if name == "title" and title is None:
            title = (child.text or "").strip() or None
        elif name == "subject":
            keywords = [(li.text or "").strip() for li in child.iter() if _local(li.tag) == "li"]
    return title, [k for k in keywords if k]


def clean_text(text: str) -> str:
    """HTML entities decoded, underscores to spaces, trailing numbers dropped ("smiley110",
    "arrow03_2"), spaces collapsed."""
    text = re.sub(r"\s+", " ", html.unescape(text).replace("_", " ")).strip(" -")
    while True:
        shorter = re.sub(r"(?<=[A-Za-z]{3})\d+[a-z]?$|\s+\d+[a-z]?$", "", text).strip(" -")
        if shorter == text:
            return text
        text = shorter


def clean_keywords(keywords: list[str], title: str) -> tuple[str, ...]:
    out: list[str] = []
    words = set(re.findall(r"[a-z]+", title.casefold()))
    for keyword in keywords:
        keyword = re.sub(r"\s+", " ", keyword.replace("_", " ")).strip().casefold()
        if (len(keyword) < 3 or keyword in _NOISE_KEYWORDS or re.search(r"\d|0x|hash|\(", keyword)
                or keyword in words or keyword in out):
            continue
        out.append(keyword)
        if len(out) == MAX_KEYWORDS:
            break
    return tuple(out)


def category_of(relative: str) -> str:
    """The first two folders of a clipart's path; "" (no category) for the "unsorted" folder."""
    folders = relative.split("/")[:-1]
    return "" if not folders or folders[0] == "unsorted" else "/".join(folders[:2])


def scan(root: str | Path, *, max_title_share: int = MAX_TITLE_SHARE, max_bytes: int = MAX_SVG_BYTES) -> ClipartScan:
    """Every usable clipart under ``root``, sorted by path; the others counted by reason."""
    root = Path(root)
    skipped: Counter = Counter()
    seen: set[str] = set()
    raw: list[tuple[Path, str, str, str, list[str]]] = []
    for path in sorted(root.rglob("*.svg")):
        if path.stat().st_size > max_bytes:
            skipped["too large to draw quickly"] += 1
            continue
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen:
            skipped["duplicate file"] += 1
            continue
        seen.add(digest)
        try:
            title, keywords = read_metadata(data)
        except ElementTree.ParseError:
            skipped["not XML"] += 1
            continue
        if title is None:
            skipped["no title"] += 1
            continue
        raw.append((path, path.relative_to(root).as_posix(), digest, title, keywords))
    shares = Counter(title for *_, title, _ in raw)
    cliparts = []
    for path, relative, digest, title, keywords in raw:
        if _AUTHOR_PREFIX.match(title):
            title = path.stem  # the suffix is copied between files; the file name is the picture's
        elif shares[title] > max_title_share:
            skipped["collection title"] += 1
            continue
        title = clean_text(title)
        if len(re.findall(r"[A-Za-z]", title)) < 3 or re.search(r"@|https?:|www\.", title):
            skipped["no usable title"] += 1
            continue
        cliparts.append(Clipart(path, relative, digest, title, clean_keywords(keywords, title),
                                category_of(relative)))
    return ClipartScan(cliparts, skipped)


def check_renderer() -> None:
    """Fail at once, with what to install, when cairosvg or the cairo library is missing (otherwise
    every drawing would fail and be counted as a bad file)."""
    from ...errors import InputError

    try:
        import cairosvg  # noqa: F401 - cairocffi loads the C library on import
    except ImportError:
        raise InputError("drawing the cliparts needs cairosvg: pip install 'lamra[demo]'") from None
    except OSError as exc:
        raise InputError(f"drawing the cliparts needs the cairo library ({exc}): apt-get install libcairo2 "
                         "(make data-packages)") from None


def render(path: str | Path, size: int):
    """The SVG drawn on a white ``size`` x ``size`` square (aspect kept, centred), an RGB PIL image.

    Raises whatever cairosvg raises on a file it cannot draw (the caller counts those).
    """
    import cairosvg
    from PIL import Image

    data = Path(path).read_bytes()
    if b"<text" in data or b":text" in data:
        _reset_font_caches()
    png = cairosvg.svg2png(bytestring=data, output_width=size, background_color="white")
    drawn = Image.open(io.BytesIO(png))
    drawn.load()
    drawn = drawn.convert("RGB")  # taller than wide: shrunk to fit below
    if drawn.size != (size, size):
        drawn.thumbnail((size, size))
        canvas = Image.new("RGB", (size, size), "white")
        canvas.paste(drawn, ((size - drawn.width) // 2, (size - drawn.height) // 2))
        drawn = canvas
    return drawn


def _reset_font_caches() -> None:
    """Forget the fonts cairo has loaded, so that a text is drawn as a fresh process draws it.

    Measured: cairo keeps the first face it resolves for a family and weight, set up for the size
    it was first used at; a bold label drawn tiny in one SVG then changes the pixels of a bold title
    in the next one. Without this, the images would depend on which files a process drew before
    (and so on the number of workers). Only safe with no cairo object alive, hence the collection.
    """
    import gc

    import cairocffi

    gc.collect()
    cairocffi.cairo.cairo_debug_reset_static_data()


def is_blank(image, *, tolerance: int = 8) -> bool:
    """True when every pixel is (nearly) the same colour: nothing was drawn."""
    low, high = zip(*image.getextrema())
    return max(h - lo for lo, h in zip(low, high)) <= tolerance


def render_png(task: tuple[str, int]) -> tuple[bytes | None, str | None]:
    """(PNG bytes, None), or (None, the reason) for a file that cannot be drawn or draws nothing.
    A top-level function so a process pool can run it."""
    path, size = task
    try:
        image = render(path, size)
    except Exception as exc:  # noqa: BLE001 - cairosvg raises many kinds; the file is skipped and counted
        logger.debug("cannot render %s: %s", path, exc)
        return None, "render failed"
    if is_blank(image):
        return None, "blank render"
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue(), None
