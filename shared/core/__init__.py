"""The pure core: specs and roles, the per-facet checks, the planner, renewal policy, the connection
record and registry formats. No I/O, no clock of its own."""
