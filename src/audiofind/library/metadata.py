"""What a file says about itself: words from its name, its folders and its embedded tags, for BM25 search.

At index time every clip gets a `TextRecord`; its `fts_columns()` go into an SQLite FTS5 table (plain
`unicode61` tokenizer) next to the audio vectors. Stemming happens here in Python, at index time and at
query time alike (`tokenize_for_search`), so both sides fold "barking" and "bark" the same way.

Which embedded fields count: those that describe the *sound* (title, description, comment, keywords,
genre, subject, category, the recordist's iXML note) and the album, because in sound-effect libraries
the album is the collection ("Forest Ambiences Vol 2") and usually describes it. Artist, engineer,
copyright, software, bext originator and iXML scene/take/tape/project name people, devices and
production bookkeeping, not sounds, so they are left out: they would only make unrelated queries match.
"""

from __future__ import annotations

import io
import logging
import os
import re
import stat
import struct
import threading
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import snowballstemmer

from ..paths import printable_path

log = logging.getLogger(__name__)

FIELD_CAP = 2_000  # characters kept per embedded field
TOTAL_CAP = 8_000  # characters kept over all embedded fields of one file
_CHUNK_CAP = 4 << 20  # a RIFF metadata chunk larger than this is hostile or broken: skipped unread
_MAX_CHUNKS = 1_000
FTS_COLUMNS = ("name", "folders", "ucs_category", "metadata")
TEXT_RECORD_VERSION = 2  # bump when the words a file yields change: records of older versions are rebuilt
FIELDS = ("title", "description", "comment", "keywords", "genre", "subject", "category", "note", "album")

# words that recorders, phones and DAWs put into names: they say nothing about the sound
_GENERIC = frozenset({
    "audio", "sound", "sounds", "snd", "sfx", "fx", "effects", "track", "trk", "tk", "take", "rec",
    "recording", "clip", "sample", "samples", "smp", "untitled", "unnamed", "noname", "new", "file", "copy",
    "final", "edit", "mix", "mixdown", "bounce", "export", "render", "alt", "ver", "version", "memo", "id",
    "dr", "ste", "tascam", "mono", "stereo", "wav", "mp", "ogg", "flac", "aif", "aiff",
})  # fmt: skip
_HEX = frozenset("0123456789abcdefABCDEF")
_EXTENSION = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,4}$")
_ALNUM = re.compile(r"[^\W_]+")


def _subwords(token: str) -> list[str]:
    """Split an alphanumeric run at camelCase and letter/digit boundaries: 'HTTPServer2' -> HTTP Server 2."""
    parts, start = [], 0
    for i in range(1, len(token)):
        a, b, after = token[i - 1], token[i], token[i + 1 : i + 2]
        if (
            a.isdigit() != b.isdigit()
            or (a.islower() and b.isupper())
            or (a.isupper() and b.isupper() and after.islower())
        ):
            parts.append(token[start:i])
            start = i
    parts.append(token[start:])
    return parts


def _is_junk(token: str) -> bool:
    """Hashes, counters and take numbers: as many digits as letters ('t12', 'DR0000'), or long hex."""
    digits = sum(c.isdigit() for c in token)
    if digits == 0:
        return False
    return digits * 2 >= len(token) or (len(token) >= 6 and all(c in _HEX for c in token))


COMPOUND_MIN = 6  # shorter words are never split: "hstep", "wose" are names, not compounds
_PART_MIN = 3  # a split whose parts are shorter than this ("crack y", "on ager") is a guess, not kept


@lru_cache(maxsize=1)
def _segmenter() -> Any:
    """wordsegment's English unigram/bigram model (Google web counts), loaded once (~0.4 s, ~95 MB)."""
    import wordsegment

    wordsegment.load()
    return wordsegment


@lru_cache(maxsize=65_536)
def compound_parts(word: str) -> tuple[str, ...]:
    """The words run together in a lowercase compound ('windleaves' -> wind, leaves); () when not one."""
    if len(word) < COMPOUND_MIN or not word.isascii():
        return ()
    parts = tuple(_segmenter().segment(word))
    if len(parts) < 2 or any(len(p) < _PART_MIN or not p.isalpha() for p in parts):
        return ()
    return parts


def _words(text: str) -> list[str]:
    """Lowercase words of `text`: >= 2 letters, not a hash or counter, not a generic recorder word;
    a compound ('swordhit', 'DoorSlam' already splits at its capital) is followed by its parts."""
    out = []
    for token in _ALNUM.findall(text):
        if _is_junk(token):
            continue
        for part in _subwords(token):
            word = part.lower()
            if len(word) >= 2 and word.isalpha() and word not in _GENERIC:
                out.append(word)
                out.extend(p for p in compound_parts(word) if p not in _GENERIC)
    return list(dict.fromkeys(out))


def filename_words(name: str) -> str:
    """The words a file name carries ('fs_gravel_3.ogg' -> 'fs gravel'); '' for 'ZOOM0001.WAV' or a hash."""
    base = re.split(r"[/\\]", name)[-1]
    return " ".join(_words(_EXTENSION.sub("", base)))


def folder_words(relative_dir: str) -> str:
    """The words of the folders between the indexed root and the file, split like file names."""
    return " ".join(dict.fromkeys(w for part in re.split(r"[/\\]", relative_dir) for w in _words(part)))


# UCS (Universal Category System) CatID prefixes -> category; a CatID is prefix + subcategory ("DOORWood")
_UCS_CATEGORIES = {
    "AIR": "air", "AERO": "aircraft", "ALRM": "alarms", "AMB": "ambience", "ANML": "animals",
    "BEEP": "beeps", "BELL": "bells", "BIRD": "birds", "BOAT": "boats", "BLLT": "bullets",
    "TOON": "cartoon", "CERM": "ceramics", "CHAIN": "chains", "CHEM": "chemicals", "CLOCK": "clocks",
    "CLOTH": "cloth", "COM": "communications", "CMPT": "computers", "CREA": "creatures", "CRWD": "crowds",
    "DSGN": "designed", "DEST": "destruction", "DESTR": "destruction", "DIRT": "dirt sand", "DOOR": "doors",
    "DRWR": "drawers", "ELEC": "electricity", "EQUIP": "equipment", "EXPL": "explosions", "FART": "farts",
    "FGHT": "fight", "FIRE": "fire", "FRWK": "fireworks", "FOLY": "foley", "FOOD": "food drink",
    "FEET": "footsteps", "FOOT": "footsteps", "GAME": "games", "GEO": "geothermal", "GLAS": "glass",
    "GORE": "gore", "GUN": "guns", "HORN": "horns", "HMN": "human", "ICE": "ice", "LASR": "lasers",
    "LETHR": "leather", "LIQ": "liquid mud", "MACH": "machines", "MAG": "magic", "MECH": "mechanical",
    "METL": "metal", "MOTR": "motors", "MOVE": "movement", "MUSC": "musical", "NATD": "natural disaster",
    "OBJ": "objects", "PAPR": "paper", "PLAS": "plastic", "RAIN": "rain", "ROBT": "robots", "ROCK": "rocks",
    "ROPE": "rope", "RUBR": "rubber", "SCI": "scifi", "SNOW": "snow", "SPRT": "sports",
    "SWSH": "swooshes swish", "WHSH": "swooshes whoosh", "TOOL": "tools", "TOY": "toys", "TRN": "trains",
    "UI": "user interface", "VEGE": "vegetation", "VEH": "vehicles", "VOX": "voices", "WATR": "water",
    "WEAP": "weapons", "WTHR": "weather", "WHST": "whistles", "WIND": "wind", "WNDW": "windows",
    "WING": "wings", "WOOD": "wood",
}  # fmt: skip
# the common abbreviated UCS subcategories; any other is kept as its lowercase self ("Wood" -> "wood")
_UCS_SUBCATEGORIES = {
    "misc": "", "impt": "impact", "mvmt": "movement", "crsh": "crash debris", "brk": "break",
    "fric": "friction", "tonl": "tonal", "metl": "metal", "plas": "plastic", "glas": "glass",
    "elec": "electric", "mech": "mechanism", "antq": "antique", "dsgn": "designed", "tech": "hitech",
    "hmn": "human", "anml": "animal", "crea": "creature", "insc": "insect", "forst": "forest",
    "urbn": "urban", "rurl": "rural", "subn": "suburban", "watr": "water", "sirn": "siren",
    "grvl": "gravel", "cnst": "construction", "appl": "appliance", "hdwr": "hardware", "knck": "knock",
    "splt": "splat", "hors": "horse", "clth": "cloth", "bf": "bodyfall", "brth": "breath",
    "hydr": "hydraulic pneumatic", "undwtr": "underwater", "traf": "traffic", "offc": "office",
    "rest": "restaurant bar", "room": "room tone", "wcat": "wild cat", "swng": "swinging",
    "slid": "sliding", "bubl": "bubbles", "splsh": "splash", "rmbl": "rumble", "veh": "vehicle",
    "sprt": "sport", "conv": "conversation", "laff": "laughter", "apls": "applause", "shotg": "shotgun",
}  # fmt: skip
_CAT_ID = re.compile(r"[A-Z]{2,5}[A-Za-z]*")


@dataclass(frozen=True)
class UcsName:
    """A file name in UCS form: CatID[-UserCategory]_FXName[_CreatorID[_SourceID...]]."""

    cat_id: str
    category: str  # "doors"
    subcategory: str  # "wood"
    fx_name: str  # words of the FXName field
    extra: str  # words of the user category, creator and source fields (often a library's name)


def parse_ucs(name: str) -> UcsName | None:
    """The UCS parts of a file name whose first field is a known CatID, else None."""
    fields = _EXTENSION.sub("", re.split(r"[/\\]", name)[-1]).split("_")
    cat_id, _, user_category = fields[0].partition("-")
    if len(fields) < 2 or not _CAT_ID.fullmatch(cat_id):
        return None
    parts = _subwords(cat_id)
    if parts[0] not in _UCS_CATEGORIES or len(parts) > 2 or (len(parts) == 2 and not parts[1].istitle()):
        return None
    sub = parts[1].lower() if len(parts) == 2 else ""
    extra = " ".join(_words(" ".join([user_category, *fields[2:]])))
    return UcsName(cat_id, _UCS_CATEGORIES[parts[0]], _UCS_SUBCATEGORIES.get(sub, sub),
                   " ".join(_words(fields[1])), extra)  # fmt: skip


# ---- embedded metadata ----

# normalised tag keys (ID3 frame ids, MP4 atoms, Vorbis/APE/ASF names, TXXX/freeform descriptions) -> field
_TAG_FIELDS = {
    "tit2": "title", "©nam": "title", "title": "title", "tit3": "description", "desc": "description",
    "ldes": "description", "description": "description", "comm": "comment", "©cmt": "comment",
    "comment": "comment", "tcon": "genre", "©gen": "genre", "genre": "genre", "keywords": "keywords",
    "keyw": "keywords", "subject": "subject", "tit1": "category", "©grp": "category", "grouping": "category",
    "category": "category", "subcategory": "category", "talb": "album", "©alb": "album", "album": "album",
    "albumtitle": "album",
}  # fmt: skip
_INFO_FIELDS = {"title": "title", "comment": "comment", "keywords": "keywords", "genre": "genre",
                "subject": "subject", "product": "album"}  # fmt: skip
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def _tag_key(key: str) -> str:
    """'TXXX:DESCRIPTION' -> 'description', 'COMM::eng' -> 'comm', '----:com.apple.iTunes:X' -> 'x'."""
    k = key.lower()
    if k.startswith(("txxx:", "----:")):
        return k.rsplit(":", 1)[-1]
    return k.removeprefix("wm/") if k.startswith("wm/") else k.split(":", 1)[0]


def _texts(value: Any) -> list[str]:
    """The text inside a tag value of any mutagen flavour (ID3 frame, list of str, MP4 freeform bytes)."""
    items = getattr(value, "genres", None) or getattr(value, "text", None) or value
    if not isinstance(items, (list, tuple)):
        items = [items]
    out = []
    for item in items:
        if isinstance(item, bytes):
            item = item.decode("utf-8", "replace")
        out.append(item if isinstance(item, str) else str(getattr(item, "value", item)))
    return out


def _read_tags(f: io.BufferedReader, add: Any) -> None:
    """ID3 (mp3, wav, aiff), Vorbis comments (ogg, opus, flac), MP4, APE and ASF tags, via mutagen.

    iTunes' COMM:iTunNORM/iTunSMPB comments are hex numbers, not words, so they are skipped.
    """
    import mutagen  # here, not at the top: searching needs `tokenize_for_search` only

    tags = getattr(mutagen.File(f), "tags", None)
    for key, value in tags.items() if tags else ():
        if not key.lower().startswith("comm:itun") and (name := _TAG_FIELDS.get(_tag_key(key))):
            for text in _texts(value):
                add(name, text)


def _unmojibake(text: str) -> str:
    """RIFF text is latin-1 by the book but UTF-8 in practice: re-decode when it round-trips as UTF-8."""
    try:
        return text.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return text


def _riff_chunks(f: io.BufferedReader) -> list[tuple[bytes, bytes]]:
    """The bext, iXML and LIST-INFO chunks of a RIFF/RF64 file, read with bounds, stopping at its end."""
    size, pos, big_data, found = os.fstat(f.fileno()).st_size, 12, None, []
    for _ in range(_MAX_CHUNKS):
        f.seek(pos)
        header = f.read(8)
        if len(header) < 8:
            break
        ident, n = header[:4], struct.unpack("<I", header[4:])[0]
        if ident == b"data" and n == 0xFFFFFFFF and big_data is not None:
            n = big_data
        if ident == b"ds64" and len(body := f.read(min(n, 28))) >= 16:  # RF64 keeps big sizes here
            big_data = struct.unpack_from("<Q", body, 8)[0]
        elif ident in (b"bext", b"iXML", b"LIST") and n <= _CHUNK_CAP:
            body = f.read(n)
            if ident == b"bext":
                found.append((ident, body.ljust(602, b"\0")))  # a cut-off bext still has its description
            elif len(body) == n and (ident != b"LIST" or body[:4] == b"INFO"):
                found.append((ident, body))
        pos += 8 + n + (n & 1)
        if pos >= size:
            break
    return found


def _tiny_wav(ident: bytes, body: bytes) -> io.BytesIO:
    """A WAV holding one metadata chunk: wavinfo reads whole files and gives up on truncated ones."""
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, 44_100, 88_200, 2, 16)
    data = b"data\2\0\0\0\0\0"  # one frame: wavinfo wants a data chunk; last, a broken chunk only sees EOF
    chunks = fmt + data + struct.pack("<4sI", ident, len(body)) + body + b"\0" * (len(body) & 1)
    return io.BytesIO(b"RIFF" + struct.pack("<I", len(chunks) + 4) + b"WAVE" + chunks)


def _read_riff(f: io.BufferedReader, add: Any) -> None:
    """BWF bext description, RIFF INFO fields and iXML NOTE/USER, each chunk parsed by wavinfo on its own."""
    from wavinfo import WavInfoReader  # here: wavinfo loads lxml, which a search never needs

    for ident, body in _riff_chunks(f):
        try:
            wav = WavInfoReader(_tiny_wav(ident, body), info_encoding="latin_1", bext_encoding="latin_1")
            if wav.bext:
                add("description", _unmojibake(wav.bext.description))
            if wav.info:
                for attr, name in _INFO_FIELDS.items():
                    add(name, _unmojibake(getattr(wav.info, attr) or ""))
            if wav.ixml and (root := wav.ixml.raw_xml.getroot()) is not None:
                for element in [*root.findall("NOTE"), *root.findall("USER")]:
                    add("note", " ".join(element.itertext()))
        except Exception as error:  # a hostile chunk costs only itself
            log.debug("unreadable %s chunk: %s", ident.decode("latin-1"), error)


def _nonblocking(path: str, flags: int) -> int:
    """Open without waiting: a FIFO swapped in after the stat check must not hang the indexer."""
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0))


def read_embedded(path: str | os.PathLike[str]) -> dict[str, str]:
    """The describing tags embedded in a file, by field name (FIELDS); {} if unreadable. Never raises."""
    values: dict[str, list[str]] = {name: [] for name in FIELDS}

    def add(name: str, text: str) -> None:
        text = _CONTROL.sub(" ", text[:FIELD_CAP]).strip()
        if text and text not in values[name]:
            values[name].append(text)

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return {}
        with open(path, "rb", opener=_nonblocking) as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return {}
            head = f.read(12)
            readers = [_read_riff] if head[:4] in (b"RIFF", b"RF64", b"BW64") and head[8:] == b"WAVE" else []
            for reader in [*readers, _read_tags]:
                try:
                    f.seek(0)
                    reader(f, add)
                except Exception as error:  # a bad tag must not stop indexing
                    log.debug("%s: %s failed: %s", printable_path(path), reader.__name__, error)
    except (OSError, ValueError) as error:
        log.debug("%s: cannot read metadata: %s", printable_path(path), error)
    out, total = {}, 0
    for name in FIELDS:
        text = " ; ".join(values[name])[:FIELD_CAP][: TOTAL_CAP - total]
        if text:
            out[name], total = text, total + len(text)
    return out


# ---- search tokens ----

_local = threading.local()


@lru_cache(maxsize=65_536)
def stem(word: str) -> str:
    """English Snowball (Porter2) stem: 'footsteps' -> 'footstep', 'barking' -> 'bark'."""
    if not hasattr(_local, "stemmer"):  # snowball stemmers keep state: one per thread
        _local.stemmer = snowballstemmer.stemmer("english")
    return _local.stemmer.stemWord(word)


def tokenize_for_search(text: str) -> list[str]:
    """Casefolded, accent-free, stemmed tokens: the same function for the FTS5 index and the query."""
    plain = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return [stem(t) if t.isalpha() else t for t in _ALNUM.findall(plain.casefold())]


@dataclass(frozen=True)
class TextRecord:
    """The text known about one clip: file-name words, folder words, UCS category and embedded tags."""

    name: str
    folders: str = ""
    ucs_category: str = ""
    metadata: str = ""
    fields: dict[str, str] = field(default_factory=dict)

    def fts_columns(self) -> dict[str, str]:
        """Stemmed text per FTS5 column (FTS_COLUMNS), to insert into a table with the unicode61 tokenizer."""
        return {column: " ".join(tokenize_for_search(getattr(self, column))) for column in FTS_COLUMNS}

    def to_dict(self) -> dict[str, Any]:
        """For display and JSON: the unstemmed words and each embedded field."""
        return {"name": self.name, "folders": self.folders, "ucs_category": self.ucs_category,
                "metadata": dict(self.fields)}  # fmt: skip


def build_text_record(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> TextRecord:
    """Everything `path` says about itself; `root` is the indexed folder, whose own name is not used."""
    path = os.fspath(path)
    try:
        relative = os.path.relpath(os.path.dirname(os.path.abspath(path)), os.path.abspath(root))
    except ValueError:  # another drive on Windows
        relative = ""
    base = os.path.basename(path)
    ucs = parse_ucs(base)
    fields = read_embedded(path)
    return TextRecord(
        name=" ".join(filter(None, [ucs.fx_name, ucs.extra])) if ucs else filename_words(base),
        folders=folder_words("" if relative.split(os.sep)[0] == os.pardir else relative),
        ucs_category=" ".join(filter(None, [ucs.category, ucs.subcategory])) if ucs else "",
        metadata=" ".join(fields.values()),
        fields=fields,
    )
