"""Gradio Space-style entry point: ``python app.py`` launches the UI (needs the ``demo`` extra).

Like a Hugging Face Space, it exposes a module-level ``demo`` and listens where Gradio's
environment variables say (``GRADIO_SERVER_NAME``, default 127.0.0.1; ``GRADIO_SERVER_PORT``,
default 7860). ``EGR_MODEL`` picks a model directory instead of the shipped one.
"""

from __future__ import annotations

import os

from ethnic_group_recognizer.model import Recognizer
from ethnic_group_recognizer.serve.errors import DEFAULT_MAX_UPLOAD_BYTES
from ethnic_group_recognizer.serve.gradio.ui import build_demo

demo = build_demo(Recognizer.load(os.environ.get("EGR_MODEL") or None))

if __name__ == "__main__":
    demo.launch(max_file_size=DEFAULT_MAX_UPLOAD_BYTES, show_error=True, run_history=False)
