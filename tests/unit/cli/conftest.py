"""Fixtures for the CLI tests; the fake CRI server lives in cri_fake.py."""

from cri_fake import fake  # noqa: F401 - re-exported as a fixture
