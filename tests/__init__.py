"""charlm's tests.

tests.quiet_exit is imported here, before any conftest or test module imports torch, so that its
exit handler is registered first and runs last (its docstring says why).
"""

from tests import quiet_exit  # noqa: F401
