"""An env package whose optional dependency is not installed (tests/test_env_packages.py)."""

import recurrl_test_absent_dependency  # noqa: F401  (installed nowhere)
