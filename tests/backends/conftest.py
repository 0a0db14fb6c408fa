"""tests/backends: the Keras losses and metrics on whichever Keras backend is running.

The main test run executes these under TensorFlow; tests/test_backends.py runs them again in
one subprocess per other installed backend (KERAS_BACKEND=jax, KERAS_BACKEND=torch), since
Keras reads KERAS_BACKEND once, at import.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: oracle.py
