"""The dead-letter stream's entry layout, written by `lua/dead_letter.lua` and read by name by
`dead_index.lua`, `purge_dead.lua`, `replay_dead.lua` and the admin commands.

A dead entry holds the dead letter's own fields, then every field of the original entry:

    dead_layout       "2": names this layout (always the first field)
    original_id       the entry's id on the events stream
    reason_class      smtp_permanent, invalid_recipient, poison or max_deliveries
    reason            why it died, for a person
    last_error        the last transient error before that ("" if none)
    deliveries        how many times it was delivered
    consumer          its last owner
    first_attempt_ms  the time in the original entry's id
    dead_at_ms        when it died
    event_id, order_id, type, v, data, traceparent, replays ...   the original fields

Every name occurs once, so the entry reads the same as a map (redis-py's dict, the contract
test, `jq`) as it does as a list. A poison entry's fields may have any name, so a reserved name
gets a prefix when the original field is copied: a name that is one of the own names above or
that starts with `orig:` is stored as `orig:` + name (`reason` -> `orig:reason`, `orig:x` ->
`orig:orig:x`). Readers remove it, and a replay puts back exactly the original fields. The own
fields keep their plain names because they are the documented contract (docs/asyncapi.yaml,
`DeadLetter`) that operators and tools already read, and only the rare poison entry is
changed. A `dead:` prefix on the own fields would rename that contract. A count of own fields
would still split the entry by position, which a reader that sees a map cannot do: a repeated
name would hide the dead letter's own value.

`replays` belongs to the original fields. It counts the event's replays and goes back onto the
events stream with the event, so the replay cap holds across rounds.

The layout before this one (layout 1), in dead streams written before the upgrade, has no
`dead_layout`. Its first field is `original_id`, its eight own fields end with `dead_at_ms`,
and the original fields follow unchanged, so they may repeat an own name. The readers still
accept it. The Lua scripts take the first field of each name (the own fields come first), and
`replay_dead.lua` treats every field after the first `dead_at_ms` as an original field. A
Python reader gets a dict from redis-py, where a repeated name keeps only its last value. For
such an old poison entry it shows the original field's value, as it did before this layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, NamedTuple

__all__ = [
    "CONSUMER",
    "DEAD_AT_MS",
    "DELIVERIES",
    "ESCAPE",
    "FIRST_ATTEMPT_MS",
    "LAST_ERROR",
    "LAYOUT",
    "LAYOUT_VERSION",
    "LEGACY_OWN_FIELDS",
    "ORIGINAL_ID",
    "OWN_FIELDS",
    "REASON",
    "REASON_CLASS",
    "REPLAYS",
    "DeadFields",
    "split_dead_fields",
    "unescape",
]

#: The first field of a dead entry in this layout; its value is LAYOUT_VERSION.
LAYOUT: Final = "dead_layout"
LAYOUT_VERSION: Final = "2"
ORIGINAL_ID: Final = "original_id"
REASON_CLASS: Final = "reason_class"
REASON: Final = "reason"
LAST_ERROR: Final = "last_error"
DELIVERIES: Final = "deliveries"
CONSUMER: Final = "consumer"
FIRST_ATTEMPT_MS: Final = "first_attempt_ms"
DEAD_AT_MS: Final = "dead_at_ms"
#: The dead letter's own fields in this layout, in the order dead_letter.lua writes them.
OWN_FIELDS: Final = (
    LAYOUT,
    ORIGINAL_ID,
    REASON_CLASS,
    REASON,
    LAST_ERROR,
    DELIVERIES,
    CONSUMER,
    FIRST_ATTEMPT_MS,
    DEAD_AT_MS,
)
#: The own fields of layout 1, which began with ORIGINAL_ID and had no LAYOUT field.
LEGACY_OWN_FIELDS: Final = OWN_FIELDS[1:]
#: The prefix of an original field whose name is reserved.
ESCAPE: Final = "orig:"
#: An original field: how many times an operator has replayed the event.
REPLAYS: Final = "replays"

_OWN: Final = frozenset(name.encode() for name in OWN_FIELDS)
_LEGACY_OWN: Final = frozenset(name.encode() for name in LEGACY_OWN_FIELDS)
_ESCAPE: Final = ESCAPE.encode()


def unescape(name: bytes) -> bytes:
    """The original field's name from its name in a dead entry of this layout."""
    return name.removeprefix(_ESCAPE)


class DeadFields(NamedTuple):
    """A dead entry split into the dead letter's own fields and the original entry's."""

    #: Own field name (one of OWN_FIELDS) -> value; a missing field is absent.
    own: dict[str, bytes]
    #: The original entry's fields, by their original names.
    original: dict[bytes, bytes]
    #: True for this layout, False for layout 1 (or an entry in neither layout).
    named: bool


def split_dead_fields(fields: Mapping[bytes, bytes]) -> DeadFields:
    """Splits a dead entry, as redis-py returns it, by field name.

    An entry in neither layout is read as layout 1, so each field that has an own name is
    taken as an own field. Readers tolerate missing fields.
    """
    # redis-py builds the dict in the entry's order, so the first key is the first field.
    named = next(iter(fields), None) == LAYOUT.encode()
    reserved = _OWN if named else _LEGACY_OWN
    own: dict[str, bytes] = {}
    original: dict[bytes, bytes] = {}
    for name, value in fields.items():
        if name in reserved:
            own[name.decode()] = value
        else:
            original[unescape(name) if named else name] = value
    return DeadFields(own, original, named)
