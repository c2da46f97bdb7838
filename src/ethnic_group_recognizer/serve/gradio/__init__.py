"""The Gradio UI: :mod:`.ui` builds it (standalone or for ``egr serve``), :mod:`.mount` mounts it
at ``/gradio`` inside the server. Both import only :mod:`ethnic_group_recognizer.serve.core` of
the serving package, so nothing here imports the app that mounts it."""
