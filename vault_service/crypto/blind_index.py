"""Blind indexes: HMAC-SHA256 of a normalised value under a scoped key.

Keys are derived inside Vault (transit HMAC of a label under a non-exportable key)
and cached like branch keys. Names, birth dates and contacts use a key per
structure, so a database reader cannot link one person across structures; the NIR
and the France Travail id use national keys (their lookups are restricted and
audited apart). Normalisation decides what counts as "equal": it is the contract
of search, so it is tested value by value.
"""

from __future__ import annotations

import datetime
import hmac
import re
import unicodedata
import uuid
from collections.abc import Callable
from hashlib import sha256
from typing import Final

import phonenumbers

from vault_service.errors import InvalidParameter

_LABEL: Final = b"vault-service/blind-index/v1/"
# Apostrophes typed many ways (U+2019, U+2018, acute accent, backtick) all drop.
_NAME_DROP = re.compile("[\\s\\-'\u2019\u2018`\u00b4.]+")
_NIR = re.compile(
    r"^[12378][0-9]{2}(?:0[1-9]|1[0-2]|[2-9][0-9])(?:2A|2B|[0-9]{2})[0-9]{6}[0-9]{2}$"
)
# Older 8-character identifiers and the current 11-digit ones (as the schema accepts).
_FT_ID = re.compile(r"[0-9]{7}[0-9A-Z]|[0-9]{11}")
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,253}$")
# The usual spellings of a French number ('06 12 34 56 78', '06.12.34.56.78',
# '+33 6 12 34 56 78', '0033612345678'): their E.164 form needs no parser, and
# phonenumbers costs ~25 us a value (tests/unit/test_crypto.py checks the two agree).
_FR_PHONE = re.compile(r"(?:0|\+33 ?|0033 ?)([1-9])((?:[ .\-]?[0-9]){8})")
_FR_SEPARATORS = re.compile(r"[ .\-]")


class NormalisationError(InvalidParameter):
    code = "invalid_search_value"
    title = "A search value cannot be normalised for its field"


def normalise_name(value: str) -> str:
    """'Élodie-Anne  D\u2019Arc' and 'elodie anne darc' index alike: case, accents,
    hyphens, apostrophes and spaces do not count; ligatures fold (Œ → OE)."""
    decomposed = unicodedata.normalize("NFKD", value.replace("œ", "oe").replace("Œ", "OE"))
    # Combining marks (accents) and format characters (zero-width spaces, bidi marks,
    # tags) do not make another person.
    # ASCII holds no combining mark and no format character: only the rest is looked up.
    combining, category = unicodedata.combining, unicodedata.category
    stripped = "".join(
        c for c in decomposed if c < "\x80" or (not combining(c) and category(c) != "Cf")
    )
    folded = _NAME_DROP.sub("", stripped.casefold().replace("æ", "ae"))
    if not folded:
        raise NormalisationError()
    return folded


def normalise_date(value: str) -> str:
    try:
        return datetime.date.fromisoformat(value.strip()).isoformat()
    except ValueError:
        raise NormalisationError() from None


def normalise_email(value: str) -> str:
    # The whole address folds to lower case: providers treat local parts
    # case-insensitively in practice, and a counsellor types what the youth says.
    folded = unicodedata.normalize("NFC", value.strip()).lower()
    if not _EMAIL.fullmatch(folded):
        raise NormalisationError()
    return folded


def normalise_phone(value: str) -> str:
    """To E.164, French numbers by default: '06 12 34 56 78', '+33 6 12 34 56 78'
    and '0033612345678' are one phone."""
    usual = _FR_PHONE.fullmatch(value)
    if usual is not None:
        return "+33" + usual[1] + _FR_SEPARATORS.sub("", usual[2])
    try:
        number = phonenumbers.parse(value, "FR")
    except phonenumbers.NumberParseException:
        raise NormalisationError() from None
    if not phonenumbers.is_possible_number(number):
        raise NormalisationError()
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def normalise_nir(value: str) -> str:
    compact = re.sub(r"[\s.\-]", "", value).upper()
    if not _NIR.fullmatch(compact) or not nir_key_valid(compact):
        raise NormalisationError()
    return compact


def nir_key_valid(nir: str) -> bool:
    body = nir[:13].replace("2A", "19").replace("2B", "18")
    return 97 - int(body) % 97 == int(nir[13:])


def normalise_ft_id(value: str) -> str:
    compact = re.sub(r"\s", "", value).upper()
    if not _FT_ID.fullmatch(compact):
        raise NormalisationError()
    return compact


NORMALISERS: Final[dict[str, Callable[[str], str]]] = {
    "name": normalise_name,
    "date": normalise_date,
    "email": normalise_email,
    "phone": normalise_phone,
    "nir": normalise_nir,
    "ft_id": normalise_ft_id,
}


def key_label(index_name: str, structure_id: uuid.UUID | None) -> bytes:
    """The label whose Vault HMAC is the index key: scope is part of the label."""
    scope = b"national" if structure_id is None else b"structure/" + structure_id.hex.encode()
    return _LABEL + scope + b"/" + index_name.encode("ascii")


def digest(key: bytes, normalised: str) -> bytes:
    # The one-shot form: the same HMAC-SHA256, without a Python HMAC object per value.
    return hmac.digest(key, normalised.encode("utf-8"), sha256)
