"""Encoders for the cue tests: a fast fake one, and the real packaged MiniLM loaded once."""

import pytest

from srmcr.encoder import TextEncoder
from tests.cues.fakes import HashingEncoder


@pytest.fixture
def fake() -> HashingEncoder:
    return HashingEncoder()


@pytest.fixture(scope="session")
def minilm() -> TextEncoder:
    encoder = TextEncoder()
    encoder.embed(["warm up"])  # load the weights once for the whole session
    return encoder
