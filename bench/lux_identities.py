"""Generator of Luxembourg-like identities (invented): French, German, Luxembourgish and
Portuguese names, valid matricules, married vs birth names, twins, and noisy copies of them
(typos, swapped day/month, single-digit date errors, missing fields, dropped accents)."""

from __future__ import annotations

import dataclasses
import random

from engine.matricule import make_matricule
from engine.mpi.model import Traits

FAMILY = {
    "lu": [
        "Schmit",
        "Muller",
        "Weber",
        "Wagner",
        "Hoffmann",
        "Thill",
        "Reuter",
        "Kieffer",
        "Majerus",
        "Schroeder",
        "Welter",
        "Hansen",
        "Klein",
        "Wagener",
        "Goedert",
        "Kremer",
        "Becker",
        "Steichen",
        "Feller",
        "Hilbert",
        "Lanners",
        "Zeimet",
        "Theis",
        "Nilles",
        "Faber",
        "Ries",
        "Kayser",
        "Meyers",
        "Bour",
        "Wirtz",
    ],
    "de": [
        "Müller",
        "Schmidt",
        "Schneider",
        "Fischer",
        "Meyer",
        "Schulz",
        "Becker",
        "Koch",
        "Richter",
        "Wolf",
        "Schäfer",
        "Bauer",
        "Krüger",
        "Hartmann",
        "Lange",
        "Schwarz",
        "Zimmermann",
        "Braun",
        "Hofmann",
        "Krause",
    ],
    "fr": [
        "Martin",
        "Bernard",
        "Dubois",
        "Thomas",
        "Robert",
        "Richard",
        "Petit",
        "Durand",
        "Leroy",
        "Moreau",
        "Simon",
        "Laurent",
        "Lefèvre",
        "Michel",
        "Garcia",
        "Fournier",
        "Girard",
        "Bonnet",
        "Dupont",
        "Lambert",
    ],
    "pt": [
        "Da Silva",
        "Dos Santos",
        "Ferreira",
        "Pereira",
        "Oliveira",
        "Costa",
        "Rodrigues",
        "Martins",
        "Gonçalves",
        "Lopes",
        "Marques",
        "Almeida",
        "Ribeiro",
        "Pinto",
        "Carvalho",
        "Teixeira",
        "Moreira",
        "Correia",
        "Mendes",
        "Nunes",
        "Sousa",
        "Fernandes",
        "Conceição",
        "Vieira",
        "Monteiro",
    ],
}
GIVEN = {
    "F": [
        "Marie",
        "Anne",
        "Claire",
        "Sophie",
        "Julie",
        "Laura",
        "Sarah",
        "Lea",
        "Emma",
        "Lena",
        "Mia",
        "Anna",
        "Sandra",
        "Nathalie",
        "Christiane",
        "Monique",
        "Josiane",
        "Ana",
        "Maria",
        "Rita",
        "Sofia",
        "Beatriz",
        "Inês",
        "Joana",
        "Carla",
        "Mireille",
        "Françoise",
        "Hélène",
        "Jeanne",
        "Nadine",
        "Tessy",
        "Martine",
    ],
    "M": [
        "Jean",
        "Paul",
        "Pierre",
        "Marc",
        "Luc",
        "Michel",
        "Jos",
        "Romain",
        "Claude",
        "Patrick",
        "Laurent",
        "Thomas",
        "Luca",
        "Noah",
        "Ben",
        "Max",
        "Tom",
        "Felix",
        "Lukas",
        "Jonas",
        "João",
        "José",
        "António",
        "Manuel",
        "Rui",
        "Pedro",
        "Tiago",
        "Nuno",
        "Gilles",
        "Yves",
        "Guy",
        "Fernand",
    ],
}
STREETS = [
    "Rue de l'Église",
    "Route d'Arlon",
    "Rue Principale",
    "Avenue de la Gare",
    "Rue du Moulin",
    "Rue de Luxembourg",
    "Grand-Rue",
    "Rue des Champs",
    "Rue de la Forêt",
    "Rue du Château",
    "Boulevard Royal",
    "Rue Dicks",
    "Rue de Hollerich",
    "Rue Michel Rodange",
    "Rue de Strasbourg",
    "Rue du Fossé",
]
CITIES = [
    ("Luxembourg", "1"),
    ("Esch-sur-Alzette", "4"),
    ("Differdange", "4"),
    ("Dudelange", "3"),
    ("Ettelbruck", "9"),
    ("Diekirch", "9"),
    ("Strassen", "8"),
    ("Bertrange", "8"),
    ("Mersch", "7"),
    ("Wiltz", "9"),
    ("Echternach", "6"),
    ("Remich", "5"),
    ("Grevenmacher", "6"),
    ("Pétange", "4"),
]


SYLLABLES = {
    "lu": (
        [
            "Kie",
            "Wel",
            "Stei",
            "Hil",
            "Zei",
            "Lan",
            "Maj",
            "Goe",
            "Kre",
            "Wag",
            "Thil",
            "Reu",
            "Bour",
            "Nil",
            "Schro",
            "Feie",
            "Hett",
            "Kon",
            "Mull",
            "Ent",
        ],
        [
            "fer",
            "ter",
            "chen",
            "bert",
            "met",
            "ners",
            "erus",
            "dert",
            "mer",
            "ener",
            "ges",
            "ter",
            "ling",
            "ges",
            "ding",
            "sch",
            "inger",
            "er",
            "en",
            "tz",
        ],
    ),
    "pt": (
        [
            "Fer",
            "Per",
            "Oli",
            "Cos",
            "Rod",
            "Mar",
            "Gon",
            "Lo",
            "Al",
            "Ri",
            "Pin",
            "Car",
            "Tei",
            "Mor",
            "Cor",
            "Men",
            "Nu",
            "Sou",
            "Vie",
            "Mon",
        ],
        [
            "reira",
            "eira",
            "veira",
            "ta",
            "rigues",
            "tins",
            "çalves",
            "pes",
            "meida",
            "beiro",
            "to",
            "valho",
            "xeira",
            "eira",
            "reia",
            "des",
            "nes",
            "sa",
            "ira",
            "teiro",
        ],
    ),
    "fr": (
        [
            "Mar",
            "Ber",
            "Du",
            "Tho",
            "Ro",
            "Ri",
            "Pe",
            "Le",
            "Mo",
            "Si",
            "Lau",
            "Mi",
            "Gar",
            "Four",
            "Gi",
            "Bon",
            "Dup",
            "Lam",
            "Fon",
            "Gau",
        ],
        [
            "tin",
            "nard",
            "bois",
            "mas",
            "bert",
            "chard",
            "tit",
            "roy",
            "reau",
            "mon",
            "rent",
            "chel",
            "cia",
            "nier",
            "rard",
            "net",
            "ont",
            "bert",
            "taine",
            "thier",
        ],
    ),
    "de": (
        [
            "Mül",
            "Schmi",
            "Schnei",
            "Fi",
            "Mey",
            "Schul",
            "Be",
            "Ko",
            "Rich",
            "Wol",
            "Schä",
            "Bau",
            "Krü",
            "Hart",
            "Lan",
            "Schwar",
            "Zim",
            "Brau",
            "Hof",
            "Krau",
        ],
        [
            "ler",
            "dt",
            "der",
            "scher",
            "er",
            "z",
            "cker",
            "ch",
            "ter",
            "f",
            "fer",
            "mann",
            "ger",
            "mann",
            "ge",
            "tz",
            "mer",
            "n",
            "mann",
            "se",
        ],
    ),
}


def _family(rng: random.Random, origin: str) -> str:
    """A real common name 40% of the time, else a plausible invented one (register-like diversity)."""
    if rng.random() < 0.4:
        return rng.choice(FAMILY[origin])
    heads, tails = SYLLABLES[origin]
    name = rng.choice(heads) + rng.choice(tails) + (rng.choice(tails) if rng.random() < 0.3 else "")
    if origin == "pt" and rng.random() < 0.3:
        name = f"{name} {rng.choice(FAMILY['pt'])}"
    return name


def _origin(rng: random.Random) -> str:
    return rng.choices(["lu", "pt", "fr", "de"], [0.45, 0.25, 0.18, 0.12])[0]


_USED: set[str] = set()


def _matricule(rng: random.Random, birth: str) -> str:
    """A valid matricule not given to anybody else in this run."""
    while True:
        value = make_matricule(birth + f"{rng.randrange(1000):03d}")
        if value not in _USED:
            _USED.add(value)
            return value


def person(rng: random.Random, serial: int) -> Traits:
    sex = rng.choice("MF")
    family = _family(rng, _origin(rng))
    given = rng.choice(GIVEN[sex]) + (f" {rng.choice(GIVEN[sex])}" if rng.random() < 0.3 else "")
    year, month, day = rng.randint(1925, 2024), rng.randint(1, 12), rng.randint(1, 28)
    birth = f"{year:04d}{month:02d}{day:02d}"
    birth_name = ""
    if sex == "F" and year < 2000 and rng.random() < 0.4:  # uses her spouse's name
        birth_name, family = family, _family(rng, _origin(rng))
    city, region = rng.choice(CITIES)
    return Traits(
        family=family,
        given=given,
        birth_name=birth_name,
        birth_date=birth,
        sex=sex,
        matricule=_matricule(rng, birth),
        house_number=str(rng.randint(1, 180)),
        street=rng.choice(STREETS),
        city=city,
        postcode=region + f"{rng.randint(0, 999):03d}",
    )


def twin_of(rng: random.Random, t: Traits, serial: int) -> Traits:
    """Same family name, birth date and address; another given name (and id)."""
    names = [g for g in GIVEN[t.sex or "F"] if g != t.given.split()[0]]
    return dataclasses.replace(t, given=rng.choice(names), matricule=_matricule(rng, t.birth_date))


def _typo(rng: random.Random, s: str) -> str:
    if len(s) < 3:
        return s
    i = rng.randrange(1, len(s) - 1)
    kind = rng.random()
    if kind < 0.33:
        return s[:i] + s[i + 1 :]
    if kind < 0.66:
        return s[:i] + rng.choice("aeioulnrst") + s[i + 1 :]
    return s[: i - 1] + s[i] + s[i - 1] + s[i + 1 :]


def _date_error(rng: random.Random, d: str) -> str:
    if rng.random() < 0.6 and int(d[6:]) <= 12:
        return d[:4] + d[6:] + d[4:6]  # day and month swapped
    i = rng.choice([3, 5, 7])
    return d[:i] + str((int(d[i]) + rng.randint(1, 9)) % 10) + d[i + 1 :]


def noisy(rng: random.Random, t: Traits) -> Traits:
    """What a facility might send for this person."""
    r = rng.random
    family, birth_name = t.family, t.birth_name
    if birth_name and r() < 0.4:
        family, birth_name = birth_name, ""  # the facility knows her by her birth name only
    elif birth_name and r() < 0.5:
        birth_name = ""
    given = t.given.split()[0] if r() < 0.3 else t.given
    out = dataclasses.replace(
        t,
        family=_typo(rng, family) if r() < 0.08 else family,
        birth_name=birth_name,
        given=_typo(rng, given) if r() < 0.08 else given,
        birth_date=_date_error(rng, t.birth_date) if r() < 0.06 else t.birth_date,
        sex="" if r() < 0.05 else t.sex,
        matricule=t.matricule if r() < 0.5 else "",
    )
    if r() < 0.4:
        out = dataclasses.replace(out, house_number="", street="", city="", postcode="")
    if r() < 0.3:
        out = dataclasses.replace(out, family=out.family.upper(), given=out.given.upper())
    return out


def generate(
    n_register: int,
    n_incoming: int,
    n_twins: int = 0,
    seed: int = 42,
    unknown_share: float = 0.1,
) -> tuple[list[Traits], list[Traits], list[int | None], set[tuple[int, int]]]:
    """(register, incoming, truth: register index per incoming or None, twin pairs of register indexes)."""
    rng = random.Random(seed)
    _USED.clear()
    register = [person(rng, i) for i in range(n_register)]
    twins: set[tuple[int, int]] = set()
    for k in range(n_twins):
        a = rng.randrange(n_register)
        register.append(twin_of(rng, register[a], n_register + k))
        twins.add((a, len(register) - 1))
    incoming: list[Traits] = []
    truth: list[int | None] = []
    for _ in range(n_incoming):
        if rng.random() < unknown_share:
            incoming.append(noisy(rng, person(rng, rng.randrange(10**6))))
            truth.append(None)
        else:
            i = rng.randrange(len(register))
            incoming.append(noisy(rng, register[i]))
            truth.append(i)
    return register, incoming, truth, twins
