"""What tests/conftest.py needs for the moto fixtures (tests/moto_server.py): copy this line there.

pytest loads plugins only from the root conftest's ``pytest_plugins``, so this file itself is not loaded; it
exists to say what to add and why. Until then run with ``-p tests.moto_server``.
"""

pytest_plugins = ["tests.moto_server"]
