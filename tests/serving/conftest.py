"""Fixtures of the serving tests: the tiny served model (``tests/support/served_model.py``)."""

from tests.support.served_model import served_model  # noqa: F401 - a fixture
