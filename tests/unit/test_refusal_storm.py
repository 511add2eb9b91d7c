"""The storm detector: the same refusal for most recipients is the relay refusing us."""

from __future__ import annotations

import random

from acme_notify.flow import RefusalStorm
from acme_notify.replies import refusal_key

DENIED = refusal_key("550 5.7.1 <x@example.com>: Message refused by policy")
UNKNOWN = refusal_key("550 5.1.1 <x@example.com>: User unknown")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_one_refusal_for_every_recipient_is_a_storm_at_the_fifth_recipient() -> None:
    """A misconfigured relay: four recipients may die for it, never the fifth."""
    storm = RefusalStorm(window_s=60, min_recipients=5, min_share=0.5, clock=Clock())
    verdicts = [storm.refused(DENIED, f"customer{n}@example.com") for n in range(8)]
    assert verdicts == [0, 0, 0, 0, 5, 6, 7, 8]


def test_genuine_bounces_among_accepted_mail_never_make_a_storm() -> None:
    """5 % of recipients unknown, the same reply each time: a minority, not a storm."""
    clock = Clock()
    storm = RefusalStorm(window_s=60, min_recipients=5, min_share=0.5, clock=clock)
    rng = random.Random(5)
    storms = 0
    for n in range(3_000):  # 60 s at 50 e-mails/s
        clock.now = n / 50
        if rng.random() < 0.05:
            storms += storm.refused(UNKNOWN, f"customer{n}@example.com") > 0
        else:
            storm.accepted()
    assert storms == 0


def test_one_recipient_refused_again_and_again_is_not_a_storm() -> None:
    """Retries of one bad address are one recipient, however often they come."""
    storm = RefusalStorm(window_s=60, min_recipients=5, min_share=0.5, clock=Clock())
    assert not any(storm.refused(DENIED, "same@example.com") for _ in range(20))


def test_refusals_older_than_the_window_are_forgotten() -> None:
    """Four refusals an hour ago and one now are not five in the window."""
    clock = Clock()
    storm = RefusalStorm(window_s=60, min_recipients=5, min_share=0.5, clock=clock)
    for n in range(4):
        storm.refused(DENIED, f"old{n}@example.com")
    clock.now = 3_600
    assert storm.refused(DENIED, "new@example.com") == 0
    for n in range(3):
        storm.refused(DENIED, f"new{n}@example.com")
    assert storm.refused(DENIED, "last@example.com") == 5


def test_a_busy_past_does_not_delay_recognising_the_storm() -> None:
    """A minute of accepted mail before the relay breaks: still a storm at the fifth refusal."""
    clock = Clock()
    storm = RefusalStorm(window_s=60, min_recipients=5, min_share=0.5, clock=clock)
    for n in range(3_000):
        clock.now = n / 50
        storm.accepted()
    verdicts = [storm.refused(DENIED, f"customer{n}@example.com") for n in range(6)]
    assert verdicts == [0, 0, 0, 0, 5, 6]
