"""The migration tools' tests reuse the doctor suite's fixtures: its test CA and namespaces."""

from tests.doctor.conftest import ca, netns  # noqa: F401  (fixtures, registered by import)
