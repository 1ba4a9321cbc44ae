import sys
from pathlib import Path

# the tests import their NumPy twins and shared helpers as plain modules from this folder
sys.path.insert(0, str(Path(__file__).parent))
