"""What identifies a patient, and the keyed pseudonym that stands in for it.

Raw patient identifiers never reach an index, a cache, a log or default command output.
Identifiers that group images (the patient ID, the name) are replaced by
:func:`patient_hash`, so patient-level splits still work; the other identifying
elements are withheld. :data:`IDENTIFYING_ELEMENTS` is the one list both
:func:`torchdicom.to_dataframe` and ``torchdicom info`` mask by.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal

__all__ = [
    "DEFAULT_SALT",
    "IDENTIFYING_ELEMENTS",
    "SALT_VARIABLE",
    "patient_hash",
    "resolve_salt",
    "salt_fingerprint",
]

#: The environment variable holding the site's secret salt.
SALT_VARIABLE = "TORCHDICOM_SALT"
#: The salt when neither an argument nor :data:`SALT_VARIABLE` gives one: public, so
#: hashes made with it are pseudonyms only against people without the identifiers.
DEFAULT_SALT = "torchdicom-v1"

#: Identifying elements (by pydicom keyword) and how they are masked: ``"hash"`` — replaced
#: by :func:`patient_hash` of the value (identifiers that group a patient's images);
#: ``"withhold"`` — left out (or shown as ``<masked>``).
IDENTIFYING_ELEMENTS: Mapping[str, Literal["hash", "withhold"]] = MappingProxyType(
    {
        "PatientID": "hash",
        "PatientName": "hash",
        "OtherPatientIDs": "hash",
        "OtherPatientNames": "hash",
        "IssuerOfPatientID": "hash",
        "PatientBirthDate": "withhold",
        "PatientBirthTime": "withhold",
        "PatientAddress": "withhold",
        "PatientTelephoneNumbers": "withhold",
        "PatientMotherBirthName": "withhold",
        "MilitaryRank": "withhold",
        "EthnicGroup": "withhold",
        "PatientComments": "withhold",
        "OtherPatientIDsSequence": "withhold",
        "ReferringPhysicianName": "withhold",
        "PerformingPhysicianName": "withhold",
        "OperatorsName": "withhold",
        "InstitutionAddress": "withhold",
        "AccessionNumber": "withhold",
    }
)


def resolve_salt(salt: str | None = None) -> str:
    """``salt``, else the ``TORCHDICOM_SALT`` environment variable, else :data:`DEFAULT_SALT`."""
    if salt is not None:
        return salt
    return os.environ.get(SALT_VARIABLE, DEFAULT_SALT)


def patient_hash(identifier: str, salt: str | None = None) -> str:
    """The keyed pseudonym of a patient identifier: HMAC-SHA256 keyed by the salt, 16 hex digits.

    Equal identifiers give equal hashes (so patient-level splits work) while the
    identifier itself never reaches an index, a log or a cache. HMAC is the standard
    keyed pseudonym: without the key, the hash of a known identifier cannot be computed.
    Short IDs can be brute-forced against a public salt: set a secret
    ``TORCHDICOM_SALT`` when indexes leave the site.

    Args:
        identifier: (0010,0020) *Patient ID*, (0010,0010) *Patient's Name* …
        salt: the key (see :func:`resolve_salt` for the default).

    Returns:
        16 lowercase hex digits (the first 64 bits of the HMAC); ``""`` for an empty
        identifier.

    Example:
        >>> len(patient_hash("PAT-0001", salt="site-secret"))
        16
    """
    if not identifier:
        return ""
    key = resolve_salt(salt).encode("utf-8", "surrogatepass")
    message = identifier.encode("utf-8", "surrogatepass")
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:16]


def salt_fingerprint(salt: str | None = None) -> str:
    """16 hex digits that differ between salts and do not reveal the salt.

    Stored beside hashes (the index cache) to tell whether they were made with the salt
    in effect now: hashes of one patient under two salts never match, so mixing them
    would split a patient in two.
    """
    return patient_hash("torchdicom salt fingerprint", salt)
