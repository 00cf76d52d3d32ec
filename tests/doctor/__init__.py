"""Tests of ``iceward doctor`` (src/iceward/doctor)."""
