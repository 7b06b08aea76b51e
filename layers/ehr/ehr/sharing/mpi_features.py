"""What the master patient index knows of a Patient: keyed tokens of its normalised demographics.

A Patient becomes ``Features`` here, and nothing else of it is kept:

- identifiers ``system|value`` (value upper-cased, spaces, dots and hyphens dropped), the birth date
  and its parts, the sex, postal codes, the first address line (with its postal code) and phone
  numbers (digits, the last ten) are each replaced by a **keyed HMAC-SHA256** (truncated to 128
  bits, base64url); equal values give equal tokens, and without the key a token says nothing;
- names are kept as the HMAC tokens of their phonetic codes (Metaphone and NYSIIS, from jellyfish)
  and, for typo tolerance, as a **Bloom filter of their letter bigrams** whose bit positions come
  from the same keyed HMAC (the "cryptographic long-term key" technique of privacy-preserving
  record linkage, Schnell et al.); two filters are compared with the Dice coefficient, which
  approximates the Dice similarity of the names' bigram sets;
- ``blocks``: the keyed tokens a record is filed under so that candidates are found by lookup
  (identifier, phone, birth date + sex, phonetic family name + birth year, postal code + phonetic
  given or family name), never by scanning.

``compare`` scores two feature sets with Fellegi-Sunter style agreement weights (log2 of
m/u ratios), maps the total to a 0..1 score and grades it (see docs/mpi.md).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import jellyfish

from ehr.fhir.search.encoding import normalize_string

MatchGrade = Literal["certain", "probable", "possible"]
Level = Literal["agree", "close", "partial", "disagree", "missing"]

FORMAT: Final = 1
MIN_KEY_BYTES: Final = 16
TOKEN_BYTES: Final = 16
BLOOM_BITS: Final = 512
BLOOM_HASHES: Final = 10
MAX_NAMES: Final = 4  # HumanNames read per Patient
MAX_NAME_VARIANTS: Final = 4  # family (or given) name variants kept per Patient
MAX_VALUES: Final = 3  # phones, postal codes, addresses kept per Patient
MAX_IDENTIFIERS: Final = 8
MAX_BLOCKS: Final = 24  # keeps one record's writes (and the transaction) bounded

# Score thresholds of the grades (docs/mpi.md). A demographic score is a monotone, piecewise-linear
# map of the total weight that puts these thresholds at round numbers.
CERTAIN: Final = 0.95
PROBABLE: Final = 0.80
POSSIBLE: Final = 0.50
_WEIGHT_AT_SCORE: Final = ((0.0, 0.0), (12.0, POSSIBLE), (19.0, PROBABLE), (27.0, CERTAIN), (36.0, 0.999))

# log2(m/u) agreement weights per field and level.
WEIGHTS: Final[Mapping[str, Mapping[Level, float]]] = {
    "family": {"agree": 7.0, "close": 5.0, "partial": 2.0, "disagree": -3.0, "missing": 0.0},
    "given": {"agree": 6.0, "close": 4.5, "partial": 1.5, "disagree": -5.0, "missing": 0.0},
    "birth": {"agree": 10.0, "close": 7.0, "partial": 3.0, "disagree": -6.0, "missing": 0.0},
    "sex": {"agree": 1.0, "close": 1.0, "partial": 0.0, "disagree": -4.0, "missing": 0.0},
    "postal": {"agree": 3.0, "close": 3.0, "partial": 0.0, "disagree": -1.0, "missing": 0.0},
    "address": {"agree": 3.0, "close": 3.0, "partial": 0.0, "disagree": -0.5, "missing": 0.0},
    "phone": {"agree": 7.0, "close": 7.0, "partial": 0.0, "disagree": -1.0, "missing": 0.0},
}

# Common English given-name diminutives → one canonical form (compared as a token).
_NICKNAMES: Final[Mapping[str, Sequence[str]]] = {
    "william": ("bill", "billy", "will", "willy", "liam"),
    "robert": ("bob", "bobby", "rob", "robbie", "bert"),
    "richard": ("dick", "rick", "ricky", "rich"),
    "james": ("jim", "jimmy", "jamie"),
    "john": ("jack", "johnny"),
    "jonathan": ("jon", "jonny"),
    "joseph": ("joe", "joey"),
    "thomas": ("tom", "tommy"),
    "charles": ("charlie", "chuck"),
    "christopher": ("chris", "kit"),
    "daniel": ("dan", "danny"),
    "michael": ("mike", "mikey", "mick"),
    "matthew": ("matt",),
    "anthony": ("tony",),
    "andrew": ("andy", "drew"),
    "edward": ("ed", "eddie", "ted", "ned"),
    "alexander": ("alex", "sandy"),
    "nicholas": ("nick", "nicky"),
    "steven": ("steve",),
    "stephen": ("steve",),
    "benjamin": ("ben", "benny"),
    "samuel": ("sam", "sammy"),
    "henry": ("harry", "hank"),
    "david": ("dave", "davey"),
    "peter": ("pete",),
    "elizabeth": ("liz", "lizzie", "beth", "betty", "eliza", "libby"),
    "margaret": ("maggie", "meg", "peggy", "marge"),
    "katherine": ("kate", "katie", "kathy", "kat"),
    "catherine": ("cathy", "cat"),
    "patricia": ("pat", "patty", "trish"),
    "jennifer": ("jen", "jenny"),
    "susan": ("sue", "susie"),
    "deborah": ("debbie", "deb"),
    "rebecca": ("becky", "becca"),
    "victoria": ("vicky", "tori"),
    "alexandra": ("alex", "sasha"),
    "christine": ("chris", "chrissy"),
    "barbara": ("barb", "babs"),
    "dorothy": ("dot", "dottie"),
    "abigail": ("abby",),
    "jessica": ("jess", "jessie"),
    "samantha": ("sam",),
    "theresa": ("tess", "terry"),
}
_AMBIGUOUS: Final = frozenset({"alex", "sam", "chris", "steve"})
_CANONICAL: Final[Mapping[str, str]] = {
    **{nick: name for name, nicks in _NICKNAMES.items() for nick in nicks if nick not in _AMBIGUOUS},
    "steven": "stephen",
    "steve": "stephen",
}
_PARTICLES: Final = frozenset({"van", "von", "der", "den", "de", "del", "la", "le", "da", "di", "dos", "du"})
_STREET_WORDS: Final[Mapping[str, str]] = {
    "street": "st",
    "avenue": "ave",
    "av": "ave",
    "road": "rd",
    "drive": "dr",
    "lane": "ln",
    "boulevard": "blvd",
    "court": "ct",
    "place": "pl",
    "square": "sq",
    "apartment": "apt",
    "suite": "ste",
    "north": "n",
    "south": "s",
    "east": "e",
    "west": "w",
}
_ZIP_PLUS4 = re.compile(r"^(\d{5})-?\d{4}$")
_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")


# --- tokens ---------------------------------------------------------------------------------------


class Tokenizer:
    """Keyed HMAC-SHA256 tokens and bigram Bloom filters under one secret key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"The MPI key must be at least {MIN_KEY_BYTES} bytes long.")
        self._key = key
        self._bigrams: dict[str, int] = {}

    def token(self, kind: str, value: str) -> str:
        digest = hmac.new(self._key, f"{kind}\x1f{value}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:TOKEN_BYTES]).rstrip(b"=").decode()

    def bloom(self, text: str) -> int:
        """The Bloom filter (as an int of ``BLOOM_BITS`` bits) of the padded bigrams of ``text``."""
        padded = f"_{text}_"
        bits = 0
        for i in range(len(padded) - 1):
            bits |= self._bigram_bits(padded[i : i + 2])
        return bits

    def _bigram_bits(self, bigram: str) -> int:
        cached = self._bigrams.get(bigram)
        if cached is not None:
            return cached
        digest = hmac.new(self._key, f"bloom\x1f{bigram}".encode(), hashlib.sha256).digest()
        bits = 0
        for i in range(BLOOM_HASHES):
            bits |= 1 << (int.from_bytes(digest[2 * i : 2 * i + 2], "big") % BLOOM_BITS)
        self._bigrams[bigram] = bits
        return bits


def dice(a: int, b: int) -> float:
    total = a.bit_count() + b.bit_count()
    return 2 * (a & b).bit_count() / total if total else 0.0


def _bloom_text(bits: int) -> str:
    return base64.urlsafe_b64encode(bits.to_bytes(BLOOM_BITS // 8, "big")).rstrip(b"=").decode()


def _bloom_int(text: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")


# --- features -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NameTokens:
    bloom: int
    phonetic: frozenset[str]
    canonical: str = ""  # given names: the token of the nickname-folded name

    def to_json(self) -> list[Any]:
        return [_bloom_text(self.bloom), sorted(self.phonetic), self.canonical]

    @classmethod
    def from_json(cls, data: Sequence[Any]) -> NameTokens:
        return cls(_bloom_int(str(data[0])), frozenset(str(p) for p in data[1]), str(data[2]))


@dataclass(frozen=True)
class BirthTokens:
    year: str
    date: str = ""  # full date
    swapped: str = ""  # the full date with day and month exchanged (when that is a date too)
    year_month: str = ""
    month_day: str = ""
    year_day: str = ""

    def to_json(self) -> dict[str, str]:
        return {
            key: value
            for key, value in (
                ("y", self.year),
                ("d", self.date),
                ("s", self.swapped),
                ("ym", self.year_month),
                ("md", self.month_day),
                ("yd", self.year_day),
            )
            if value
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BirthTokens:
        return cls(
            str(data.get("y", "")),
            str(data.get("d", "")),
            str(data.get("s", "")),
            str(data.get("ym", "")),
            str(data.get("md", "")),
            str(data.get("yd", "")),
        )


@dataclass(frozen=True)
class Features:
    """The tokenised matching features of one Patient (everything the index stores of it)."""

    identifiers: frozenset[str] = frozenset()
    families: tuple[NameTokens, ...] = ()
    givens: tuple[NameTokens, ...] = ()
    birth: BirthTokens | None = None
    sex: str = ""
    postal: frozenset[str] = frozenset()
    addresses: frozenset[str] = frozenset()
    phones: frozenset[str] = frozenset()
    blocks: frozenset[str] = field(default=frozenset(), compare=False)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"f": FORMAT}
        if self.identifiers:
            data["id"] = sorted(self.identifiers)
        if self.families:
            data["fam"] = [name.to_json() for name in self.families]
        if self.givens:
            data["giv"] = [name.to_json() for name in self.givens]
        if self.birth is not None:
            data["dob"] = self.birth.to_json()
        if self.sex:
            data["sex"] = self.sex
        for key, values in (("zip", self.postal), ("adr", self.addresses), ("tel", self.phones)):
            if values:
                data[key] = sorted(values)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any], blocks: Iterable[str] = ()) -> Features:
        dob = data.get("dob")
        return cls(
            identifiers=frozenset(data.get("id", ())),
            families=tuple(NameTokens.from_json(n) for n in data.get("fam", ())),
            givens=tuple(NameTokens.from_json(n) for n in data.get("giv", ())),
            birth=BirthTokens.from_json(dob) if isinstance(dob, Mapping) else None,
            sex=str(data.get("sex", "")),
            postal=frozenset(data.get("zip", ())),
            addresses=frozenset(data.get("adr", ())),
            phones=frozenset(data.get("tel", ())),
            blocks=frozenset(blocks),
        )


def _words(text: str) -> list[str]:
    folded = normalize_string(text).replace("'", "").replace("\u2019", "")
    words = ("".join(ch for ch in word if ch.isalpha()) for word in re.split(r"[\s\-_/,.]+", folded))
    return [word for word in words if word]


def _family_variants(text: str) -> list[str]:
    words = _words(text)
    if not words:
        return []
    variants = ["".join(words)]
    if len(words) > 1:
        variants += [w for w in words if len(w) >= 3 and w not in _PARTICLES]
    return variants


def _given_variants(given: Sequence[Any]) -> list[str]:
    first = next((str(g) for g in given if isinstance(g, str) and _words(g)), "")
    words = _words(first)
    if not words:
        return []
    return [words[0]] if len(words) == 1 else [words[0], "".join(words)]


def _names(patient: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    families: list[str] = []
    givens: list[str] = []
    names = patient.get("name")
    for name in (names if isinstance(names, list) else [])[:MAX_NAMES]:
        if not isinstance(name, Mapping):
            continue
        family = name.get("family")
        given = name.get("given")
        if not family and not given and isinstance(name.get("text"), str):
            words = _words(name["text"])
            if len(words) >= 2:
                family, given = words[-1], [words[0]]
        if isinstance(family, str):
            families += _family_variants(family)
        if isinstance(given, list):
            givens += _given_variants(given)
    return _unique(families)[:MAX_NAME_VARIANTS], _unique(givens)[:MAX_NAME_VARIANTS]


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _phonetics(word: str) -> tuple[str, str]:
    if not word.isascii():
        return "", ""
    return jellyfish.metaphone(word), jellyfish.nysiis(word)


def normalized_identifiers(patient: Mapping[str, Any]) -> list[str]:
    found: list[str] = []
    identifiers = patient.get("identifier")
    for identifier in identifiers if isinstance(identifiers, list) else []:
        if not isinstance(identifier, Mapping) or identifier.get("use") == "old":
            continue
        system, value = identifier.get("system"), identifier.get("value")
        if isinstance(system, str) and isinstance(value, str) and system.strip() and value.strip():
            cleaned = re.sub(r"[\s.\-]", "", value).upper()
            if cleaned:
                found.append(f"{system.strip()}|{cleaned}")
    return _unique(found)[:MAX_IDENTIFIERS]


def _birth(patient: Mapping[str, Any]) -> tuple[int, int, int] | None:
    value = patient.get("birthDate")
    match = _DATE.match(value) if isinstance(value, str) else None
    if match is None:
        return None
    year, month, day = (int(part) if part else 0 for part in match.groups())
    if not 1800 <= year <= 2200:
        return None
    if not 1 <= month <= 12:
        return year, 0, 0
    return year, month, day if 1 <= day <= 31 else 0


def _postal(code: str) -> str:
    cleaned = re.sub(r"\s", "", code).upper()
    plus4 = _ZIP_PLUS4.match(cleaned)
    return plus4.group(1) if plus4 else cleaned


def _addresses(patient: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    postal: list[str] = []
    lines: list[str] = []
    addresses = patient.get("address")
    for address in addresses if isinstance(addresses, list) else []:
        if not isinstance(address, Mapping) or address.get("use") == "old":
            continue
        code = _postal(str(address.get("postalCode") or ""))
        if code:
            postal.append(code)
        line = address.get("line")
        if code and isinstance(line, list) and line and isinstance(line[0], str):
            words = [_STREET_WORDS.get(w, w) for w in re.split(r"[^0-9a-z]+", normalize_string(line[0])) if w]
            if words:
                lines.append(f"{' '.join(words)}|{code}")
    return _unique(postal)[:MAX_VALUES], _unique(lines)[:MAX_VALUES]


def _phones(patient: Mapping[str, Any]) -> list[str]:
    found: list[str] = []
    telecoms = patient.get("telecom")
    for telecom in telecoms if isinstance(telecoms, list) else []:
        if not isinstance(telecom, Mapping) or telecom.get("system") not in ("phone", "sms"):
            continue
        if telecom.get("use") == "old":
            continue
        digits = re.sub(r"\D", "", str(telecom.get("value") or ""))
        if len(digits) >= 7:
            found.append(digits[-10:])
    return _unique(found)[:MAX_VALUES]


def _sexes(gender: str) -> tuple[str, ...]:
    return (gender,) if gender in ("male", "female") else ("male", "female")


def _name_tokens(words: Sequence[str], tokenizer: Tokenizer, *, given: bool) -> tuple[NameTokens, ...]:
    return tuple(
        NameTokens(
            tokenizer.bloom(word),
            frozenset(
                tokenizer.token(kind, code)
                for kind, code in zip(("mph", "nys"), _phonetics(word), strict=True)
                if code
            ),
            tokenizer.token("nick", _CANONICAL.get(word, word)) if given else "",
        )
        for word in words
    )


def _birth_tokens(parts: tuple[int, int, int] | None, tokenizer: Tokenizer) -> BirthTokens | None:
    if parts is None:
        return None
    token = tokenizer.token
    y, m, d = parts
    full = bool(m and d)
    return BirthTokens(
        year=token("by", f"{y:04d}"),
        date=token("bd", f"{y:04d}-{m:02d}-{d:02d}") if full else "",
        swapped=token("bd", f"{y:04d}-{d:02d}-{m:02d}") if full and d <= 12 and d != m else "",
        year_month=token("bym", f"{y:04d}-{m:02d}") if m else "",
        month_day=token("bmd", f"{m:02d}-{d:02d}") if full else "",
        year_day=token("byd", f"{y:04d}-{d:02d}") if full else "",
    )


def _blocks(
    tokenizer: Tokenizer,
    *,
    identifiers: Sequence[str],
    phones: Sequence[str],
    birth: tuple[int, int, int] | None,
    gender: str,
    family_words: Sequence[str],
    given_words: Sequence[str],
    postal_codes: Sequence[str],
) -> frozenset[str]:
    """The blocking tokens, most selective first, cut at ``MAX_BLOCKS``."""
    token = tokenizer.token
    families = _unique(code for code in (_phonetics(w)[0] for w in family_words) if code)
    givens = _unique(code for code in (_phonetics(w)[0] for w in given_words) if code)
    names = [f"{f}|{g}" for f in families[:2] for g in givens[:2]]
    blocks = [token("B-id", value) for value in identifiers]
    blocks += [token("B-tel", phone) for phone in phones]
    if birth is not None and birth[2]:
        date = "{:04d}-{:02d}-{:02d}".format(*birth)
        blocks += [token("B-dob-sex", f"{date}|{sex}") for sex in _sexes(gender)]
        blocks += [token("B-names-md", f"{n}|{birth[1]:02d}-{birth[2]:02d}") for n in names]
    if birth is not None:
        blocks += [token("B-fam-year", f"{f}|{birth[0]:04d}") for f in families]
    blocks += [token("B-names", n) for n in names]
    for code in postal_codes[:2]:
        blocks += [token("B-zip-giv", f"{code}|{g}") for g in givens]
        blocks += [token("B-zip-fam", f"{code}|{f}") for f in families]
    return frozenset(_unique(blocks)[:MAX_BLOCKS])


def extract(patient: Mapping[str, Any], tokenizer: Tokenizer) -> Features:
    """The tokenised features (and blocking keys) of a FHIR Patient resource (a dict)."""
    token = tokenizer.token
    identifiers = normalized_identifiers(patient)
    family_words, given_words = _names(patient)
    birth = _birth(patient)
    gender = str(patient.get("gender") or "")
    postal_codes, lines = _addresses(patient)
    phones = _phones(patient)
    return Features(
        identifiers=frozenset(token("id", value) for value in identifiers),
        families=_name_tokens(family_words, tokenizer, given=False),
        givens=_name_tokens(given_words, tokenizer, given=True),
        birth=_birth_tokens(birth, tokenizer),
        sex=token("sex", gender) if gender in ("male", "female", "other") else "",
        postal=frozenset(token("zip", code) for code in postal_codes),
        addresses=frozenset(token("adr", line) for line in lines),
        phones=frozenset(token("tel", phone) for phone in phones),
        blocks=_blocks(
            tokenizer,
            identifiers=identifiers,
            phones=phones,
            birth=birth,
            gender=gender,
            family_words=family_words,
            given_words=given_words,
            postal_codes=postal_codes,
        ),
    )


# --- comparison -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    identifier: bool
    levels: Mapping[str, Level]
    weight: float
    score: float
    grade: MatchGrade | None


def _name_level(a: Sequence[NameTokens], b: Sequence[NameTokens], *, nicknames: bool = False) -> Level:
    if not a or not b:
        return "missing"
    best: Level = "disagree"
    rank = {"disagree": 0, "partial": 1, "close": 2, "agree": 3}
    for x in a:
        for y in b:
            level = _one_name_level(x, y, nicknames=nicknames)
            if rank[level] > rank[best]:
                best = level
                if best == "agree":
                    return best
    return best


def _one_name_level(x: NameTokens, y: NameTokens, *, nicknames: bool) -> Level:
    similarity = dice(x.bloom, y.bloom)
    if similarity >= 0.92 or (nicknames and x.canonical and x.canonical == y.canonical):
        return "agree"
    phonetic = bool(x.phonetic & y.phonetic)
    if similarity >= 0.75 or (phonetic and similarity >= 0.4):
        return "close"
    if similarity >= 0.5 or phonetic:
        return "partial"
    return "disagree"


def _birth_level(a: BirthTokens | None, b: BirthTokens | None) -> Level:
    if a is None or b is None:
        return "missing"
    if a.date and a.date == b.date:
        return "agree"
    if (a.date and a.date == b.swapped) or (b.date and b.date == a.swapped):
        return "close"  # day and month swapped: a common slip, and nothing else differs
    for x, y in ((a.year_month, b.year_month), (a.month_day, b.month_day), (a.year_day, b.year_day)):
        if x and x == y:
            return "partial"
    if (not a.date or not b.date) and a.year == b.year:
        return "partial"  # only a year (or year and month) known on one side, and it agrees
    return "disagree"


def _set_level(a: frozenset[str], b: frozenset[str]) -> Level:
    if not a or not b:
        return "missing"
    return "agree" if a & b else "disagree"


def _score(weight: float) -> float:
    points = _WEIGHT_AT_SCORE
    if weight <= points[0][0]:
        return 0.0
    for (w0, s0), (w1, s1) in itertools.pairwise(points):
        if weight <= w1:
            return round(s0 + (s1 - s0) * (weight - w0) / (w1 - w0), 4)
    return points[-1][1]


def compare(a: Features, b: Features) -> Comparison:
    """Score record ``b`` as a match for ``a`` (symmetric)."""
    family = _name_level(a.families, b.families)
    given = _name_level(a.givens, b.givens, nicknames=True)
    if a.identifiers & b.identifiers:
        birth = _birth_level(a.birth, b.birth)
        if given == "disagree" and birth == "disagree":
            # The same identifier on someone with another name and birth date: a mistyped or reused
            # identifier, for a person to look at — never an automatic link.
            return Comparison(True, {"given": given, "birth": birth}, 0.0, POSSIBLE, "possible")
        return Comparison(True, {}, float("inf"), 1.0, "certain")
    if family in ("disagree", "partial") and given in ("disagree", "partial"):
        # Given and family names swapped (a data-entry slip): take the crossed comparison, one step down.
        crossed_family = _name_level(a.families, b.givens)
        crossed_given = _name_level(a.givens, b.families)
        if crossed_family in ("agree", "close") and crossed_given in ("agree", "close"):
            family, given = "close", "close"
    levels: dict[str, Level] = {
        "family": family,
        "given": given,
        "birth": _birth_level(a.birth, b.birth),
        "sex": "missing" if not a.sex or not b.sex else ("agree" if a.sex == b.sex else "disagree"),
        "postal": _set_level(a.postal, b.postal),
        "address": _set_level(a.addresses, b.addresses),
        "phone": _set_level(a.phones, b.phones),
    }
    weight = sum(WEIGHTS[name][level] for name, level in levels.items())
    score = _score(weight)
    return Comparison(False, levels, weight, score, _grade(score, levels))


def _grade(score: float, levels: Mapping[str, Level]) -> MatchGrade | None:
    if score < POSSIBLE:
        return None
    if levels["given"] == "disagree" or levels["birth"] == "disagree":
        # Siblings, twins, a parent and child of the same name: never more than possible.
        return "possible"
    if (
        score >= CERTAIN
        and levels["birth"] in ("agree", "close")
        and levels["given"] in ("agree", "close")
        and levels["sex"] != "disagree"
        and (levels["family"] in ("agree", "close") or levels["phone"] == "agree")
    ):
        return "certain"
    return "probable" if score >= PROBABLE else "possible"


def matchable(features: Features) -> bool:
    """Whether there is enough to look for a person: an identifier, a phone, a complete birth
    date with a name or gender, or a name with a postal code."""
    named = bool(features.families or features.givens)
    dated = features.birth is not None and bool(features.birth.date)
    return bool(
        features.identifiers
        or features.phones
        or (dated and (named or features.sex))
        or (named and features.postal)
    )
