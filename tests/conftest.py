"""pytest's hook file for tests/: the shared helpers live in tests/pdtest.py (a unique
module name: several test folders have a conftest.py of their own, so test modules import
the helpers as `from pdtest import ...`, never `from pdtest import ...`)."""
from pdtest import *  # noqa: F401,F403  (fixtures must be visible to pytest here)
from pdtest import decode_node, model_path, node_factory  # noqa: F401
