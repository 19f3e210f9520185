"""Helpers the test modules share: tenant set-up and inspection, crash points, a job probe.

Test modules import from here, never from each other."""
