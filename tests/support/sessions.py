"""Facts about the NYSE calendar that tests compare against (read off the exchange's
published holiday list, not computed by the code under test)."""

#: NYSE sessions from 2024-12-20 to 2025-01-03: Christmas and New Year's Day are holidays.
NYSE_YEAR_END_2024 = [
    "2024-12-20",
    "2024-12-23",
    "2024-12-24",
    "2024-12-26",
    "2024-12-27",
    "2024-12-30",
    "2024-12-31",
    "2025-01-02",
    "2025-01-03",
]
