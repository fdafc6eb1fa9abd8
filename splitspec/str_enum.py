"""A closed set of names that are also the strings users and the wire spell them with."""

from enum import Enum


class StrEnum(str, Enum):
    """Members compare equal to their values and str() gives the value, as enum.StrEnum does from
    Python 3.11 (this project supports 3.10)."""

    def __str__(self) -> str:
        return self.value
