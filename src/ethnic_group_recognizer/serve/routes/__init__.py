"""The REST API as FastAPI routers, one module per concern; ``serve/app.py`` includes them.

Each route takes what it needs through dependencies (``RecognizerDep``, ``SettingsDep`` from
:mod:`~ethnic_group_recognizer.serve.core`) and declares its response model.
"""
