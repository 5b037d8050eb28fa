import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/helpers.py
sys.path.insert(0, str(Path(__file__).resolve().parent / "doubles"))  # test doubles (a loopback Kepler)


def pytest_configure(config):
    import os

    os.chdir(ROOT)  # tests read config.yaml and run the workflow from the repository root


# The serving tests' real exported models (tests/serving_helpers.py builds them once per session).
@pytest.fixture(scope="module")
def art(tmp_path_factory):
    from serving_helpers import artifacts

    return artifacts(tmp_path_factory)


@pytest.fixture(scope="module")
def settings(art):
    from vmpower.serving import live

    return live.load_settings(str(art["config"]))
