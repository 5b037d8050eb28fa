import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/helpers.py
sys.path.insert(0, str(Path(__file__).resolve().parent / "doubles"))  # test doubles (a loopback Kepler)


def pytest_configure(config):
    import os

    os.chdir(ROOT)  # tests read config.yaml and run the workflow from the repository root
