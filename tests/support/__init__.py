"""Test helpers shared by the suites (loopback vendor server, ...)."""
