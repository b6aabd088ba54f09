"""Loads ``examples/python-users/tests/conftest.py``'s in-memory ``Engine`` (the Rust side's
stand-in) for the seed's tests."""

import importlib.util
import pathlib

_USERS_CONFTEST = pathlib.Path(__file__).resolve().parents[2] / "python-users" / "tests" / "conftest.py"
_spec = importlib.util.spec_from_file_location("python_users_conftest", _USERS_CONFTEST)
_users = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_users)

Engine = _users.Engine
flexcore = _users.flexcore
