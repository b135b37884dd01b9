"""HL7 v2 sample messages for tests and benchmarks. All patient data is invented.

`ORU_R01_25`: a lab result (v2.5.1, UTF-8 declared in MSH-18, original acknowledgement mode):
MSH, PID, PV1, ORC, OBR, 12 OBX (a blood count; OBX-12 is free text with a \\.br\\ escape and
accents), SPM: 18 segments. PID-3 holds a national matricule (valid Luhn and Verhoeff check
digits, assigning authority RNPP) and the laboratory's own patient id. OIDs are under 2.999,
the arc reserved for examples.

`ADT_A01_23`: an admission (v2.3, 8859/1 declared, latin-1 bytes: PID-6, the mother's maiden
name, is "Müller").
"""

from __future__ import annotations

MATRICULE = "1980010112302"  # invented; YYYYMMDD + 3 digits + Luhn + Verhoeff

_ORU_SEGMENTS = [
    "MSH|^~\\&|GLIMS^2.999.10.1^ISO|LABO-TEST^2.999.10^ISO|PASSERELLE|DSP|20250314093015+0100||"
    "ORU^R01^ORU_R01|LAB20250314000123|P|2.5.1|||||LUX|UNICODE UTF-8",
    f"PID|1||{MATRICULE}^^^RNPP&2.999.1&ISO^NI~P000123456^^^LABO-TEST&2.999.10&ISO^PI||"
    "TEST^PATIENT^^^^^L||19800101|F|||1 RUE DE L'EXEMPLE^^LUXEMBOURG^^1234^LUX",
    "PV1|1|O|||||||||||||||||V000987^^^LABO-TEST&2.999.10&ISO^VN",
    "ORC|RE|ORD445566^GLIMS|LAB778899^GLIMS||CM||||20250314080000|||12345^DOCTOR^TEST^^^DR",
    "OBR|1|ORD445566^GLIMS|LAB778899^GLIMS|58410-2^CBC panel - Blood by Automated count^LN^HEMO^Hémogramme^L"
    "|||20250314074500|||||||||12345^DOCTOR^TEST^^^DR||||||20250314093000|||F",
    "OBX|1|NM|6690-2^Leukocytes [#/volume] in Blood by Automated count^LN||7.2|10*9/L^^UCUM|4.0-10.0|N|||F",
    "OBX|2|NM|789-8^Erythrocytes [#/volume] in Blood by Automated count^LN||4.61|10*12/L^^UCUM|3.9-5.2|N|||F",
    "OBX|3|NM|718-7^Hemoglobin [Mass/volume] in Blood^LN||13.8|g/dL^^UCUM|12.0-16.0|N|||F",
    "OBX|4|NM|4544-3^Hematocrit [Volume Fraction] of Blood by Automated count^LN||41.2|%^^UCUM|36-46|N|||F",
    "OBX|5|NM|787-2^MCV [Entitic volume] by Automated count^LN||89.4|fL^^UCUM|80-100|N|||F",
    "OBX|6|NM|785-6^MCH [Entitic mass] by Automated count^LN||29.9|pg^^UCUM|27-33|N|||F",
    "OBX|7|NM|786-4^MCHC [Mass/volume] by Automated count^LN||33.5|g/dL^^UCUM|32-36|N|||F",
    "OBX|8|NM|777-3^Platelets [#/volume] in Blood by Automated count^LN||452|10*9/L^^UCUM|150-400|H|||F",
    "OBX|9|NM|751-8^Neutrophils [#/volume] in Blood by Automated count^LN||4.3|10*9/L^^UCUM|1.8-7.5|N|||F",
    "OBX|10|NM|731-0^Lymphocytes [#/volume] in Blood by Automated count^LN||2.1|10*9/L^^UCUM|1.0-4.0|N|||F",
    "OBX|11|NM|742-7^Monocytes [#/volume] in Blood by Automated count^LN||0.6|10*9/L^^UCUM|0.2-1.0|N|||F",
    "OBX|12|ST|48767-8^Annotation comment [Interpretation] Narrative^LN||"
    "Thrombocytose modérée\\.br\\Contrôle conseillé (\\T\\ frottis)||||||F",
    "SPM|1|LAB778899-1^GLIMS||BLD^Whole blood^HL70487|||||||||||||20250314074500|20250314080500",
]

ORU_R01_25: bytes = ("\r".join(_ORU_SEGMENTS) + "\r").encode("utf-8")

_ADT_SEGMENTS = [
    "MSH|^~\\&|HIS|HOPITAL-TEST|PASSERELLE|DSP|20250314101500||ADT^A01|ADT000042|P|2.3|||||LUX|8859/1",
    "EVN|A01|20250314101500",
    "PID|1||1975061504286^^^RNPP^NI~H0042^^^HOPITAL-TEST^PI||TEST^PATIENT|Müller|19750615|M|||"
    "12 RUE DE L'ÉGLISE^^ESCH-SUR-ALZETTE^^4321^LUX",
    "PV1|1|I|MED^101^1^HOPITAL-TEST||||12345^DOCTOR^TEST|||MED||||1|||12345^DOCTOR^TEST|IN||||||||||||||||||||"
    "||||||20250314101000",
]

ADT_A01_23: bytes = ("\r".join(_ADT_SEGMENTS) + "\r").encode("latin-1")
