import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# the shared data folder sits beside the checkout (../shared); SHARED_DIR overrides it
SHARED = os.environ.get("SHARED_DIR", os.path.join(os.path.dirname(ROOT), "shared"))
# the evaluator's cache of canonical runs: a fresh one per test session, so every run of the
# suite computes the references it checks (and nothing is written to the user's ~/.cache)
if "RELAY_REFERENCE_CACHE" not in os.environ:
    import tempfile
    os.environ["RELAY_REFERENCE_CACHE"] = tempfile.mkdtemp(prefix="relay_references_")
