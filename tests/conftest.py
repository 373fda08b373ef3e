"""Shared fixtures."""

from pathlib import Path

import pytest

# ../shared/voc_sample beside the repository: real VOC 2012 / SBD files (see its SOURCES.md).
VOC_SAMPLE_DIR = Path(__file__).resolve().parents[2] / "shared" / "voc_sample"


@pytest.fixture(scope="session")
def voc_sample_dir() -> Path:
    """The real VOC/SBD sample files; skips the test in a clone that lacks ../shared."""
    if not (VOC_SAMPLE_DIR / "VOCdevkit" / "VOC2012").is_dir():
        pytest.skip(f"needs the real VOC/SBD sample files at {VOC_SAMPLE_DIR} (../shared/voc_sample "
                    "beside the repository; present in CI, absent in a user's clone)")
    return VOC_SAMPLE_DIR
