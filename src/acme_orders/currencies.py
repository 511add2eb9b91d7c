"""The currencies an order may be in: ISO 4217 codes with at least two minor-unit digits.

A static list, so that the HTTP contract (an enum in the OpenAPI document) and the validator
are the same list and nothing is read from disk at import time; `tests/unit/test_contract.py`
checks it against Babel's currency data, which the notifier uses to format amounts. Currencies
without minor units (JPY, KRW, CLP, ...) are left out: a price is a decimal string with up to
two decimal places, which every listed currency can carry exactly. X-codes (funds, metals,
test codes) are not something a shop charges in.
"""

from __future__ import annotations

from typing import Final

__all__ = ["CURRENCIES"]

CURRENCIES: Final = (
    "AED", "AFA", "ALK", "AMD", "ANG", "AOA", "AOK", "AON", "AOR", "ARA", "ARL", "ARM", "ARP",
    "ARS", "ATS", "AUD", "AWG", "AZM", "AZN", "BAD", "BAM", "BAN", "BBD", "BDT", "BEC", "BEF",
    "BEL", "BGL", "BGM", "BGN", "BGO", "BHD", "BMD", "BND", "BOB", "BOL", "BOP", "BOV", "BRB",
    "BRC", "BRE", "BRL", "BRN", "BRR", "BRZ", "BSD", "BTN", "BUK", "BWP", "BYB", "BYN", "BZD",
    "CAD", "CDF", "CHE", "CHF", "CHW", "CLE", "CLF", "CNH", "CNY", "COU", "CRC", "CSD", "CSK",
    "CUC", "CUP", "CVE", "CYP", "CZK", "DDM", "DEM", "DKK", "DOP", "DZD", "ECS", "ECV", "EEK",
    "EGP", "ERN", "ESA", "ESB", "ETB", "EUR", "FIM", "FJD", "FKP", "FRF", "GBP", "GEK", "GEL",
    "GHC", "GHS", "GIP", "GMD", "GNS", "GQE", "GRD", "GTQ", "GWE", "GWP", "GYD", "HKD", "HNL",
    "HRD", "HRK", "HTG", "IEP", "ILP", "ILR", "ILS", "INR", "ISJ", "JMD", "JOD", "KES", "KGS",
    "KHR", "KRH", "KRO", "KWD", "KYD", "KZT", "LKR", "LRD", "LSL", "LTL", "LTT", "LUC", "LUL",
    "LVL", "LVR", "LYD", "MAD", "MAF", "MCF", "MDC", "MDL", "MKD", "MKN", "MLF", "MNT", "MOP",
    "MRU", "MTL", "MTP", "MUR", "MVP", "MVR", "MWK", "MXN", "MXP", "MXV", "MYR", "MZE", "MZM",
    "MZN", "NAD", "NGN", "NIC", "NIO", "NLG", "NOK", "NPR", "NZD", "OMR", "PAB", "PEI", "PEN",
    "PES", "PGK", "PHP", "PKR", "PLN", "PLZ", "PTE", "QAR", "RHD", "ROL", "RON", "RSD", "RUB",
    "RUR", "SAR", "SBD", "SCR", "SDD", "SDG", "SDP", "SEK", "SGD", "SHP", "SIT", "SKK", "SLE",
    "SRD", "SRG", "SSP", "STN", "SUR", "SVC", "SZL", "THB", "TJR", "TJS", "TMT", "TND", "TOP",
    "TPE", "TRY", "TTD", "TWD", "TZS", "UAH", "UAK", "UGS", "USD", "USN", "USS", "UYP", "UYU",
    "UYW", "UZS", "VEB", "VED", "VEF", "VES", "VNN", "WST", "YDD", "YUD", "YUM", "YUN", "YUR",
    "ZAL", "ZAR", "ZMW", "ZRN", "ZRZ", "ZWG", "ZWL", "ZWR",
)  # fmt: skip
