"""Conformance suite: one table of cases run through every door into emdtree, against tests/oracle.py."""
