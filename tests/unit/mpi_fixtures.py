"""A small certified register for MPI tests (all identities invented)."""

from __future__ import annotations

from pathlib import Path

from engine.mpi.register_load import load_register
from engine.mpi.service import Mpi

REGISTER = (
    "register_id,matricule,family_name,birth_name,given_names,birth_date,sex,"
    "house_number,street,postcode,city,multiple_birth\n"
    """R1,1980010112302,Test,,Patient,19800101,F,1,Rue de l'Exemple,1234,Luxembourg,
R2,,Müller,Weber,Jean Paul,1975-06-15,M,12,Rue de l'Église,4321,Esch-sur-Alzette,
R3,,Ferreira,,Ana,19900301,F,5,Rue Haute,4321,Esch-sur-Alzette,
R4,,Ferreira,,Rita,19900301,F,5,Rue Haute,4321,Esch-sur-Alzette,
R5,,Schmit,,Paul,19620714,M,3,Avenue de la Gare,1611,Luxembourg,Y
R6,,Schmit,,Pierre,19620714,M,3,Avenue de la Gare,1611,Luxembourg,Y
R7,,Da Silva Santos,,Joao,19851123,M,44,Rue de Hollerich,1741,Luxembourg,
"""
)


def make_mpi(folder: Path) -> Mpi:
    csv_file = folder / "register.csv"
    csv_file.write_text(REGISTER, encoding="utf-8")
    mpi = Mpi(folder / "var" / "passerelle.db")
    load_register(mpi, csv_file, "test", "fixture")
    return mpi
