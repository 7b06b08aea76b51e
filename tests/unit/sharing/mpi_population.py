"""A deterministic synthetic population for the master patient index: persons with ground truth,
registered in 1-3 facilities with the slips real registration desks make.

Every person lives in a household (shared address, often a shared landline and family name);
some households have twins (same birth date, different given names) or a junior who carries a
parent's given name. Family names follow a skewed distribution, so "Smith" is common. Each local
record of a person independently gets: typos in the family or given name, a nickname, day and month
swapped or a mistyped digit in the birth date, a missing or absent phone, a move to a new address,
a family name changed by marriage (sometimes with the maiden name kept as ``use: maiden``), given and
family names swapped, a missing gender — and its own local MRN; a national identifier (an SSN)
appears on some records of the persons who have one. A few persons are registered twice in the
same facility (a local duplicate).

All names, numbers and addresses are invented; the same seed always gives the same population.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

TENANTS = ("clinic-a", "clinic-b", "clinic-c")
SSN_SYSTEM = "http://hl7.org/fhir/sid/us-ssn"


def _split(text: str, separator: str | None = None) -> list[str]:
    return text.split(separator)


MALE = _split(
    "James John Robert Michael William David Richard Joseph Thomas Charles Christopher Daniel Matthew "
    "Anthony Mark Donald Steven Paul Andrew Joshua Kenneth Kevin Brian George Timothy Ronald Edward "
    "Jason Jeffrey Ryan Jacob Gary Nicholas Eric Jonathan Stephen Larry Justin Scott Brandon Benjamin "
    "Samuel Gregory Alexander Frank Patrick Raymond Jack Dennis Jerry Tyler Aaron Jose Adam Nathan "
    "Henry Douglas Zachary Peter Kyle Noah Ethan Jeremy Walter Christian Keith Roger Terry Austin Sean "
    "Gerald Carl Harold Dylan Arthur Lawrence Jordan Jesse Bryan Billy Bruce Gabriel Joe Logan Albert "
    "Willie Alan Eugene Russell Vincent Philip Bobby Johnny Bradley Omar Mateo Luis Hiroshi Kwame Ivan"
)
FEMALE = _split(
    "Mary Patricia Jennifer Linda Elizabeth Barbara Susan Jessica Sarah Karen Lisa Nancy Betty Sandra "
    "Margaret Ashley Kimberly Emily Donna Michelle Carol Amanda Melissa Deborah Stephanie Dorothy "
    "Rebecca Sharon Laura Cynthia Amy Kathleen Angela Shirley Brenda Emma Anna Pamela Nicole Samantha "
    "Katherine Christine Helen Debra Rachel Carolyn Janet Maria Catherine Heather Diane Olivia Julie "
    "Joyce Victoria Ruth Virginia Lauren Kelly Christina Joan Evelyn Judith Andrea Hannah Megan Cheryl "
    "Jacqueline Martha Madison Teresa Gloria Sara Janice Ann Kathryn Abigail Sophia Frances Jean Alice "
    "Judy Isabella Julia Grace Amber Denise Danielle Marilyn Beverly Charlotte Natalie Theresa Diana "
    "Brittany Doris Kayla Alexis Lori Marie Fatima Mei Ingrid Aisha Yuki"
)
FAMILY = [
    *_split(
        "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez "
        "Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris "
        "Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill "
        "Flores Green Adams Nelson Baker Hall Rivera Campbell Mitchell Carter Roberts Gomez Phillips "
        "Evans Turner Diaz Parker Cruz Edwards Collins Reyes Stewart Morris Morales Murphy Cook Rogers "
        "Gutierrez Ortiz Morgan Cooper Peterson Bailey Reed Kelly Howard Ramos Kim Cox Ward Richardson "
        "Watson Brooks Chavez Wood James Bennett Gray Mendoza Ruiz Hughes Price Alvarez Castillo "
        "Sanders Patel Myers Long Ross Foster Jimenez Powell Jenkins Perry Russell Sullivan Bell "
        "Coleman Butler Henderson Barnes Fisher Vasquez Simmons Romero Jordan Patterson Hamilton "
        "Graham Reynolds Griffin Wallace Moreno West Cole Hayes Bryant Herrera Gibson Ellis Tran Medina "
        "Aguilar Stevens Murray Ford Castro Marshall Owens Harrison Fernandez McDonald Woods Washington "
        "Kennedy Wells Vargas Chen Freeman Webb Tucker Guzman Burns Crawford Olson Simpson Porter "
        "Hunter Gordon Mendez Silva Shaw Snyder Mason Dixon Munoz Hunt Hicks Holmes Palmer Wagner Black "
        "Robertson Boyd Rose Stone Salazar Fox Warren Mills Meyer Rice Schmidt Garza Daniels Ferguson "
        "Nichols Stephens Soto Weaver Ryan Gardner Payne Grant Dunn Spencer Hawkins Arnold Pierce "
        "Hansen Peters Santos Hart Bradley Knight Elliott Kowalczyk Nakamura Okafor Lindqvist"
    ),
    "O'Brien",
    "Van der Berg",
    "Garcia-Lopez",
    "Müller",
]
NICKNAMES = {
    "William": "Bill",
    "Robert": "Bob",
    "Richard": "Rick",
    "James": "Jim",
    "Joseph": "Joe",
    "Thomas": "Tom",
    "Charles": "Charlie",
    "Daniel": "Dan",
    "Michael": "Mike",
    "Anthony": "Tony",
    "Edward": "Ted",
    "Nicholas": "Nick",
    "Elizabeth": "Liz",
    "Margaret": "Peggy",
    "Katherine": "Kate",
    "Patricia": "Pat",
    "Jennifer": "Jenny",
    "Susan": "Sue",
    "Deborah": "Debbie",
    "Rebecca": "Becky",
}
STREETS = _split(
    "Main Street|Oak Avenue|Maple Drive|Cedar Lane|Pine Road|Elm Street|Washington Boulevard|Lake Road|"
    "Hill Street|Park Avenue|Sunset Drive|River Road|Church Street|Mill Lane|Spring Street|North Avenue|"
    "Highland Drive|Forest Court|Meadow Lane|Willow Way",
    "|",
)
POSTAL_CODES = [f"{n:05d}" for n in random.Random(7).sample(range(10000, 99999), 40)]


@dataclass
class Person:
    number: int
    sex: str
    given: str
    family: str
    birth: date
    household: int
    address: tuple[str, str]  # line, postal code
    landline: str | None
    mobile: str | None
    ssn: str | None
    maiden: str | None = None  # the family name at birth, for married persons
    twin_of: int | None = None


@dataclass(frozen=True)
class SyntheticRecord:
    tenant: str
    patient_id: str
    person: int
    body: dict[str, Any] = field(hash=False, compare=False)
    twin: int | None = None  # the person number of this person's twin


def _phone(rng: random.Random) -> str:
    return f"{rng.randint(201, 989)}{rng.randint(200, 999)}{rng.randint(0, 9999):04d}"


def _address(rng: random.Random) -> tuple[str, str]:
    return f"{rng.randint(1, 9999)} {rng.choice(STREETS)}", rng.choice(POSTAL_CODES)


def _birth(rng: random.Random, low: int = 1935, high: int = 2022) -> date:
    start = date(low, 1, 1)
    return start + timedelta(days=rng.randrange((date(high, 12, 31) - start).days))


def _family(rng: random.Random) -> str:
    # Skewed: low ranks are far more common (rank ~ Zipf), so Smith, Johnson and Williams repeat often.
    rank = min(int(rng.paretovariate(0.9)) - 1, len(FAMILY) - 1)
    return FAMILY[rank] if rng.random() < 0.6 else rng.choice(FAMILY)


def _given(rng: random.Random, sex: str, avoid: set[str]) -> str:
    names = MALE if sex == "male" else FEMALE
    while True:
        name = rng.choice(names)
        if name not in avoid and all(name[:2] != other[:2] for other in avoid):
            return name


def persons(rng: random.Random, count: int) -> list[Person]:
    people: list[Person] = []
    household = 0
    while len(people) < count:
        household += 1
        family = _family(rng)
        address = _address(rng)
        landline = _phone(rng) if rng.random() < 0.5 else None
        size = rng.choices((1, 2, 3, 4), weights=(50, 25, 15, 10))[0]
        parent_birth = _birth(rng, 1935, 1990)
        members: list[Person] = []
        for index in range(size):
            sex = rng.choice(("male", "female"))
            if index < 2:
                birth = parent_birth + timedelta(days=rng.randint(-2000, 2000)) if index else parent_birth
            else:
                birth = _birth(rng, min(parent_birth.year + 20, 2020), min(parent_birth.year + 40, 2022))
            given = _given(rng, sex, {m.given for m in members})
            members.append(
                Person(
                    number=len(people) + len(members),
                    sex=sex,
                    given=given,
                    family=family,
                    birth=birth,
                    household=household,
                    address=address,
                    landline=landline,
                    mobile=_phone(rng) if rng.random() < 0.75 else None,
                    ssn=f"{rng.randint(100, 899)}{rng.randint(10, 99)}{rng.randint(1000, 9999)}"
                    if rng.random() < 0.45
                    else None,
                )
            )
        if size >= 3 and rng.random() < 0.25:
            # Twins: the youngest two share a birth date (and often a sex); given names differ.
            a, b = members[-2], members[-1]
            b.birth = a.birth
            b.sex = a.sex if rng.random() < 0.6 else b.sex
            b.given = _given(rng, b.sex, {m.given for m in members})
            b.twin_of = a.number
        elif size >= 3 and rng.random() < 0.2:
            # A junior: a child carries the parent's given name.
            members[-1].sex = members[0].sex
            members[-1].given = members[0].given
        if size >= 2 and members[1].sex == "female" and rng.random() < 0.7:
            # A spouse who took the household's family name at marriage.
            members[1].maiden = _family(rng)
        for member in members:
            single = size == 1 and member.sex == "female" and member.birth.year < 1995
            if single and member.maiden is None and rng.random() < 0.2:
                member.maiden = _family(rng)
        people += members
    return people[:count]


def typo(rng: random.Random, word: str) -> str:
    """One keyboard slip: a substituted, swapped, dropped or doubled letter (keeps length ≥ 2)."""
    if len(word) < 3:
        return word + rng.choice(string.ascii_lowercase)
    position = rng.randrange(1, len(word))
    kind = rng.choice(("substitute", "transpose", "delete", "insert"))
    if kind == "substitute":
        return word[:position] + rng.choice(string.ascii_lowercase) + word[position + 1 :]
    if kind == "transpose" and position < len(word) - 1:
        return word[:position] + word[position + 1] + word[position] + word[position + 2 :]
    if kind == "delete":
        return word[:position] + word[position + 1 :]
    return word[:position] + word[position] + word[position:]


def _birth_text(rng: random.Random, birth: date) -> str | None:
    roll = rng.random()
    if roll < 0.02:
        return None
    if roll < 0.05 and birth.day <= 12 and birth.day != birth.month:
        return f"{birth.year:04d}-{birth.day:02d}-{birth.month:02d}"  # day and month swapped
    if roll < 0.08:
        text = list(birth.isoformat())
        position = rng.choice((2, 3, 6, 9))  # a decade, a year, a month's or a day's digit
        text[position] = str((int(text[position]) + rng.choice((1, 2, 3))) % 10)
        candidate = "".join(text)
        try:
            date.fromisoformat(candidate)
            return candidate
        except ValueError:
            return birth.isoformat()
    return birth.isoformat()


def record_body(rng: random.Random, person: Person, tenant: str, mrn: str) -> dict[str, Any]:
    given = person.given
    if given in NICKNAMES and rng.random() < 0.1:
        given = NICKNAMES[given]
    elif rng.random() < 0.08:
        given = typo(rng, given)
    family = person.family
    old_name = None
    if person.maiden is not None and rng.random() < 0.5:
        family = person.maiden  # registered before the marriage
    elif person.maiden is not None and rng.random() < 0.3:
        old_name = person.maiden
    if rng.random() < 0.08:
        family = typo(rng, family)
    names: list[dict[str, Any]] = [{"use": "official", "family": family, "given": [given]}]
    if rng.random() < 0.015:
        names = [{"use": "official", "family": given, "given": [family]}]  # given and family swapped
    if old_name:
        names.append({"use": "maiden", "family": old_name, "given": [person.given]})
    body: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [{"system": f"urn:ehr:mrn:{tenant}", "value": mrn}],
        "name": names,
    }
    if person.ssn and rng.random() < 0.6:
        ssn = person.ssn
        body["identifier"].append({"system": SSN_SYSTEM, "value": f"{ssn[:3]}-{ssn[3:5]}-{ssn[5:]}"})
    if rng.random() > 0.03:
        body["gender"] = person.sex
    birth = _birth_text(rng, person.birth)
    if birth:
        body["birthDate"] = birth
    moved = rng.random() < 0.1
    line, postal = _address(rng) if moved else person.address
    if rng.random() > 0.1:
        body["address"] = [{"use": "home", "line": [line], "city": "Springfield", "postalCode": postal}]
    phones = [] if moved else [p for p in (person.landline, person.mobile) if p and rng.random() < 0.6]
    if moved and rng.random() < 0.5:
        phones.append(_phone(rng))
    if phones:
        body["telecom"] = [
            {"system": "phone", "value": f"({p[:3]}) {p[3:6]}-{p[6:]}", "use": "home"} for p in phones
        ]
    return body


def population(seed: int = 20240917, count: int = 1000) -> list[SyntheticRecord]:
    """``count`` persons, each registered in 1-3 of ``TENANTS`` (a few twice in one)."""
    rng = random.Random(seed)
    records: list[SyntheticRecord] = []
    used: set[str] = set()
    people = persons(rng, count)
    twins = {p.twin_of: p.number for p in people if p.twin_of is not None}
    twins |= {b: a for a, b in twins.items()}
    for person in people:
        how_many = rng.choices((1, 2, 3), weights=(50, 30, 20))[0]
        tenants = rng.sample(TENANTS, how_many)
        if rng.random() < 0.03:
            tenants.append(tenants[0])  # registered twice in the same facility
        for tenant in tenants:
            mrn = f"{rng.randint(1000000, 9999999)}"
            while f"{tenant}|{mrn}" in used:  # an MRN is unique in its facility
                mrn = f"{rng.randint(1000000, 9999999)}"
            used.add(f"{tenant}|{mrn}")
            patient_id = f"p{len(records):05d}"
            body = record_body(rng, person, tenant, mrn)
            records.append(SyntheticRecord(tenant, patient_id, person.number, body, twins.get(person.number)))
    rng.shuffle(records)
    return records


def patient(
    family: str | None = "Quintero",
    given: str | None = "Maribel",
    *,
    birth: str | None = "1984-07-19",
    gender: str | None = "female",
    phone: str | None = "(415) 555-0142",
    line: str | None = "12 Alder Street",
    postal: str | None = "94110",
    identifiers: tuple[tuple[str, str], ...] = (),
    old_family: str | None = None,
    links: tuple[tuple[str, str], ...] = (),
) -> dict[str, Any]:
    """One Patient resource for the unit tests (each field can be left out with None)."""
    body: dict[str, Any] = {"resourceType": "Patient"}
    if identifiers:
        body["identifier"] = [{"system": system, "value": value} for system, value in identifiers]
    if family or given:
        name: dict[str, Any] = {"use": "official"}
        if family:
            name["family"] = family
        if given:
            name["given"] = [given]
        body["name"] = [name]
        if old_family:
            body["name"].append({"use": "maiden", "family": old_family, "given": [given] if given else []})
    if gender:
        body["gender"] = gender
    if birth:
        body["birthDate"] = birth
    if phone:
        body["telecom"] = [{"system": "phone", "value": phone, "use": "mobile"}]
    if line or postal:
        address: dict[str, Any] = {"use": "home"}
        if line:
            address["line"] = [line]
        if postal:
            address["postalCode"] = postal
        body["address"] = [address]
    if links:
        body["link"] = [{"other": {"reference": reference}, "type": kind} for kind, reference in links]
    return body
